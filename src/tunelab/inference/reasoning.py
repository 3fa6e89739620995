"""A model's <think> block apart from its answer, as the OpenAI-compatible servers of reasoning models return
it (``reasoning_content``). The block either opens in the answer (``<think>...</think>answer``) or in the
prompt, when the template's generation prompt ends with ``<think>`` (the answer then starts inside it)."""

from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def opens_in_prompt(prompt: str, start: str = THINK_START) -> bool:
    """The generation prompt leaves the model inside a <think> block (opened by ``start``)."""
    return prompt.rstrip().endswith(start)


def thinking_template_kwargs(enabled: bool) -> dict[str, bool]:
    """The chat-template variables that switch a thinking section on or off: Qwen3's ``enable_thinking`` and
    minimind's ``open_thinking`` (a template reads the one it knows)."""
    return {"enable_thinking": enabled, "open_thinking": enabled}


def split_reasoning(text: str, inside: bool, final: bool) -> tuple[str, str, bool]:
    """(reasoning, answer, certain) of ``text`` so far. ``inside``: the prompt opened the block. While not
    ``final``, text that may still turn into a marker is left out of both, and ``certain`` is False until it is
    known whether the text holds reasoning at all."""
    body = text
    if not inside:
        stripped = text.lstrip()
        if stripped.startswith(THINK_START):
            body = stripped[len(THINK_START):]
        elif not final and stripped and THINK_START.startswith(stripped):
            return "", "", False  # "<thi": perhaps a block is opening
        else:
            return "", text, True
    end = body.find(THINK_END)
    if end >= 0:
        return body[:end].strip(), body[end + len(THINK_END):].lstrip(), True
    if final:  # never closed: all of it was reasoning
        return body.strip(), "", True
    keep = len(body)
    for size in range(min(len(THINK_END) - 1, keep), 0, -1):  # a marker cut in half at the end
        if THINK_END.startswith(body[keep - size:]):
            keep -= size
            break
    return body[:keep].strip(), "", True  # trailing whitespace waits, as the answer's does
