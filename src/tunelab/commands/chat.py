"""`tunelab chat`: every flag checked, then the model loads and the conversation (or one --query) runs."""

from __future__ import annotations

from tunelab.commands.flags import ModelFlags, RagFlags, SamplingFlags, load_predictor


def chat_command(flags: ModelFlags, sampling: SamplingFlags, query: str | None, system: str | None,
                 rag: RagFlags | None = None) -> None:
    rag = rag or RagFlags()
    sampling.check()
    rag.check()
    options = flags.check(use="generate")  # before torch loads
    from tunelab.inference.chat import run_chat

    retriever = rag.retriever()  # the index opens before the model loads: its errors come first
    run_chat(load_predictor(flags, sampling, options, retriever), query=query, system=system)
