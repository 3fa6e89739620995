"""`tunelab chat`: every flag checked, then the model loads and the conversation (or one --query) runs."""

from __future__ import annotations

from tunelab.commands.flags import ModelFlags, SamplingFlags, load_predictor


def chat_command(flags: ModelFlags, sampling: SamplingFlags, query: str | None, system: str | None) -> None:
    sampling.check()
    options = flags.check(use="generate")  # before torch loads
    from tunelab.inference.chat import run_chat

    run_chat(load_predictor(flags, sampling, options), query=query, system=system)
