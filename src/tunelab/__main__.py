"""`python -m tunelab ...`, which is also how launchers run it: `accelerate launch -m tunelab train x.yaml`."""

from tunelab.cli import app

app()
