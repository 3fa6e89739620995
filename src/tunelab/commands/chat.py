"""`tunelab chat`: every flag checked, then the model loads and the conversation (or one --query) runs."""

from __future__ import annotations

from tunelab.commands.flags import ModelFlags, RagFlags, SamplingFlags, load_predictor
from tunelab.errors import TunelabError


def chat_command(flags: ModelFlags, sampling: SamplingFlags, query: str | None, system: str | None,
                 rag: RagFlags | None = None, images: list[str] | None = None) -> None:
    rag = rag or RagFlags()
    sampling.check()
    rag.check()
    if images:
        check_images(images, query)
    options = flags.check(use="generate")  # before torch loads
    from tunelab.inference.chat import run_chat

    retriever = rag.retriever()  # the index opens before the model loads: its errors come first
    run_chat(load_predictor(flags, sampling, options, retriever), query=query, system=system, images=images)


def check_images(images: list[str], query: str | None) -> None:
    """--image goes with --query, and each one opens, before the model loads."""
    from tunelab.data.images import load_image

    if query is None:
        raise TunelabError("--image goes with --query; in the chat loop, attach an image with /image PATH")
    for image in images:
        load_image(image)
