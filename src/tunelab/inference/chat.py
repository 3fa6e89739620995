"""Terminal chat: one-shot answers or a multi-turn loop with streaming, /clear and /exit.

Input and output are injectable so the loop runs the same under tests as in a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from tunelab.errors import TunelabError
from tunelab.inference.predictor import Predictor
from tunelab.inference.reasoning import THINK_END, THINK_START
from tunelab.signals import Terminated

CLEAR, EXIT, IMAGE = "/clear", "/exit", "/image"


DIM, RESET = "\x1b[2m", "\x1b[0m"


def _answer(predictor: Predictor, query: str, history: list[dict], system: str | None, output: TextIO,
            images: list[str] | None = None) -> str:
    """Stream one answer to ``output`` as it is generated and return it whole; on a terminal a <think> section is
    shown dimmed, so the answer stands out."""
    pieces: list[str] = []
    shade = bool(getattr(output, "isatty", lambda: False)())
    dimmed = False
    for piece in predictor.stream(query, history, system, **({"images": images} if images else {})):
        pieces.append(piece)
        text = "".join(pieces)
        inside = THINK_START in text and THINK_END not in text.split(THINK_START, 1)[1]
        if shade and inside != dimmed:
            output.write(DIM if inside else RESET)
            dimmed = inside
        output.write(piece)
        output.flush()
    output.write((RESET if dimmed else "") + "\n")
    output.flush()
    if getattr(predictor, "rag", None) is not None:  # anything with .stream chats; only a retriever has sources
        _say_sources(predictor.last_sources)
    return "".join(pieces)


def _say_sources(hits: list) -> None:
    """Which chunks of the RAG index went into the prompt, on stderr (stdout keeps the answer alone)."""
    shade = sys.stderr.isatty()
    lines = [f"  {hit.where()} (distance {hit.distance:.3f})" for hit in hits] or ["  none close enough"]
    sys.stderr.write((DIM if shade else "") + "sources:\n" + "\n".join(lines) + (RESET if shade else "") + "\n")
    sys.stderr.flush()


def _attach(path: str, output: TextIO) -> str | None:
    """An image for the next question, checked now: a missing or unreadable file is said at once."""
    from tunelab.data.images import ImageError, load_image

    if not path:
        output.write(f"usage: {IMAGE} PATH (a local image file, file:// or data: URL)\n")
        return None
    try:
        load_image(path)
    except ImageError as error:
        output.write(f"error: {error}\n")
        return None
    output.write(f"Attached {path}; it goes with your next question.\n")
    return path


def run_chat(predictor: Predictor, query: str | None = None, system: str | None = None,
             input_fn: Callable[[str], str] = input, output: TextIO | None = None,
             images: list[str] | None = None) -> list[dict]:
    """Chat until /exit, EOF or Ctrl-C (or answer ``query`` once); return the conversation's messages. ``output``
    defaults to sys.stdout as it is at the call (not at import: a test runner or a redirect swaps it)."""
    output = output if output is not None else sys.stdout
    history: list[dict] = []
    if query is not None:
        answer = _answer(predictor, query, history, system, output, images)
        return [Predictor.messages(query, images=images)[-1], {"role": "assistant", "content": answer}]

    output.write(f"Chat with the model: {CLEAR} forgets the conversation, {IMAGE} PATH attaches an image to the "
                 f"next question, {EXIT} (or Ctrl-D) quits.\n")
    images: list[str] = []  # attached with /image, asked about in the next question
    while True:
        try:
            line = input_fn("User: ")
        except Terminated:  # SIGTERM ends the command (exit 143); Ctrl-C only the chat
            raise
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text == EXIT:
            break
        if text == CLEAR:
            history, images = [], []
            output.write("History cleared.\n")
            continue
        if text.split(maxsplit=1)[0] == IMAGE:
            attached = _attach(text[len(IMAGE):].strip(), output)
            images += [attached] if attached else []
            continue
        output.write("Assistant: ")
        output.flush()
        try:
            answer = _answer(predictor, text, history, system, output, images)
        except Terminated:
            raise
        except KeyboardInterrupt:  # stop this answer only; the turn is dropped from the history
            output.write("\n[interrupted]\n")
            continue
        except TunelabError as error:  # a text-only model given an image, an unreadable image: this turn only
            output.write(f"\nerror: {error}\n")
            images = []
            continue
        question = Predictor.messages(text, images=images)[-1]  # the images stay with their question
        history += [question, {"role": "assistant", "content": answer}]
        images = []
    return history
