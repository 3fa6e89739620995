"""tunelab webui: train, watch, chat, evaluate and export from a browser (Gradio), on the same config schema
and commands as the CLI."""
