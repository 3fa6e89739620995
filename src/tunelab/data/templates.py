"""Chat templates: the tokenizer's own Jinja template by default, or a named built-in for base models.

Built-ins are plain Jinja strings installed as ``tokenizer.chat_template``, so rendering always goes
through transformers' own compiled template (``apply_chat_template``, or its compiled template directly
for plain role/content messages) and training renders exactly what inference renders.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from pydantic import AfterValidator

from tunelab.errors import ConfigError

# Newlines are written as Jinja expressions: transformers renders with trim_blocks/lstrip_blocks, which
# would eat a literal newline next to a block tag.
NL = "{{ '\\n' }}"

# Tool calls and tool definitions are shown as JSON text by the built-ins.
_TOOL_CALLS = (
    "{% if m.tool_calls %}{% for call in m.tool_calls %}"
    "{% if m.content or not loop.first %}" + NL + "{% endif %}"
    "<tool_call>{{ (call.function or call) | tojson }}</tool_call>{% endfor %}{% endif %}"
)
_TOOLS_SYSTEM = (
    "{% if tools %}{% if system %}" + NL + NL + "{% endif %}You can call these tools:"
    "{% for tool in tools %}" + NL + "{{ tool | tojson }}{% endfor %}{% endif %}"
)
_SYSTEM = "{% set system = messages[0].content if messages[0].role == 'system' else '' %}"

BUILTIN_TEMPLATES: dict[str, str] = {
    # A plain Human/Assistant layout for base models (the demo's template).
    "default": (
        "{{ bos_token }}" + _SYSTEM + "{% if system or tools %}System: {{ system }}" + _TOOLS_SYSTEM + NL
        + "{% endif %}{% for m in messages %}"
        "{% if m.role == 'user' %}Human: {{ m.content }}" + NL
        + "{% elif m.role == 'tool' %}Tool: {{ m.content }}" + NL
        + "{% elif m.role == 'assistant' %}Assistant: {{ m.content }}" + _TOOL_CALLS + "{{ eos_token }}" + NL
        + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}{% set system = messages[0].content if messages[0].role == 'system' else "
        "'Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.' %}{{ system }}" + _TOOLS_SYSTEM + NL + NL
        + "{% for m in messages %}"
        "{% if m.role == 'user' %}### Instruction:" + NL + "{{ m.content }}" + NL + NL
        + "{% elif m.role == 'tool' %}### Observation:" + NL + "{{ m.content }}" + NL + NL
        + "{% elif m.role == 'assistant' %}### Response:" + NL + "{{ m.content }}" + _TOOL_CALLS
        + "{{ eos_token }}" + NL + NL + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:" + NL + "{% endif %}"
    ),
    "chatml": (
        _SYSTEM + "{% if system or tools %}<|im_start|>system" + NL + "{{ system }}" + _TOOLS_SYSTEM
        + "<|im_end|>" + NL + "{% endif %}"
        "{% for m in messages if m.role != 'system' %}"
        "<|im_start|>{{ m.role }}" + NL + "{{ m.content }}" + _TOOL_CALLS + "<|im_end|>" + NL
        + "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant" + NL + "{% endif %}"
    ),
    "qwen": (
        "{% set system = messages[0].content if messages[0].role == 'system' else "
        "'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}"
        "<|im_start|>system" + NL + "{{ system }}" + _TOOLS_SYSTEM + "<|im_end|>" + NL
        + "{% for m in messages if m.role != 'system' %}"
        "{% if m.role == 'tool' %}<|im_start|>user" + NL + "<tool_response>" + NL + "{{ m.content }}" + NL
        + "</tool_response><|im_end|>" + NL
        + "{% else %}<|im_start|>{{ m.role }}" + NL + "{{ m.content }}" + _TOOL_CALLS + "<|im_end|>" + NL
        + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant" + NL + "{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}" + _SYSTEM + "{% if system or tools %}<|start_header_id|>system<|end_header_id|>"
        + NL + NL + "{{ system }}" + _TOOLS_SYSTEM + "<|eot_id|>{% endif %}"
        "{% for m in messages if m.role != 'system' %}"
        "<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>" + NL + NL
        + "{{ m.content | trim }}" + _TOOL_CALLS + "<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>" + NL + NL
        + "{% endif %}"
    ),
}

# Special tokens a built-in relies on; added to the tokenizer when it lacks them.
_TEMPLATE_SPECIAL_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
# The token that ends an assistant turn, used as the generation stop token.
_TEMPLATE_STOP = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}


def check_template_name(name: str | None, label: str = "template") -> None:
    """A built-in name, a readable .jinja file or None (the tokenizer's own); said before anything loads."""
    if name is None:
        return
    if name.endswith(".jinja"):
        import os

        if not os.path.isfile(os.path.expanduser(name)):
            raise ConfigError(f"{label}: template file '{name}' does not exist")
        return
    if name not in BUILTIN_TEMPLATES:
        import difflib

        close = difflib.get_close_matches(name, list(BUILTIN_TEMPLATES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{label} '{name}' is not a built-in template ({', '.join(BUILTIN_TEMPLATES)}){hint}; "
                          "leave it unset to use the tokenizer's own")


def _template_value(name: str | None) -> str | None:
    try:
        check_template_name(name)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return name


# A config field holding a template name, checked like check_template_name (export and serve settings).
TemplateName = Annotated[str | None, AfterValidator(_template_value)]


def apply_template(tokenizer: Any, name: str | None) -> str:
    """Install the chat template on the tokenizer and return a short description of it.

    ``name`` None keeps the tokenizer's own template; a name picks a built-in; a ``.jinja`` path
    loads a template file. Base models with no template get a clear error.
    """
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template (a base model?); set template to one of "
                              f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file")
        return "tokenizer's own"
    if name.endswith(".jinja"):
        try:
            with open(name, encoding="utf-8") as handle:
                tokenizer.chat_template = handle.read()
        except OSError as error:
            raise ConfigError(f"template file '{name}' cannot be read: {error.strerror}") from None
        return name
    check_template_name(name)
    missing = [t for t in _TEMPLATE_SPECIAL_TOKENS.get(name, []) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if name in _TEMPLATE_STOP:
        tokenizer.eos_token = _TEMPLATE_STOP[name]
    tokenizer.chat_template = BUILTIN_TEMPLATES[name]
    return name


def render(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None,
           add_generation_prompt: bool = False, **template_kwargs: Any) -> str:
    """The conversation as text, exactly as the model will see it; ``template_kwargs`` are variables the
    template reads (``enable_thinking``, ...)."""
    if tools is not None and not isinstance(tools, list):
        tools = json.loads(tools)
    source = None if tools else _plain_template_source(tokenizer, messages)
    if source is not None:
        from tunelab.data.skeleton import render_by_skeleton

        variables = {**tokenizer.special_tokens_map, **template_kwargs}
        text = render_by_skeleton(source, messages, add_generation_prompt, variables)
        return text if text is not None else _quick_template(source).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables)
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt,
        **template_kwargs
    )


def _plain_messages(messages: list[dict]) -> bool:
    """Role/content dicts of plain strings: ``apply_chat_template`` hands the template these unchanged."""
    return all(type(message) is dict and message.keys() <= _PLAIN_KEYS
               and all(type(value) is str for value in message.values()) for message in messages)


_PLAIN_KEYS = frozenset(("role", "content"))


def _plain_template_source(tokenizer: Any, messages: list[dict]) -> str | None:
    """The chat template to render plain messages with directly (transformers' compiled template, in a quicker copy
    of its sandbox), or None (then ``apply_chat_template`` renders). The text is the same, without per-call
    conversion of the messages, which is half of a render's cost and a large part of tokenizing a dataset."""
    if not messages or not _plain_messages(messages):
        return None
    try:
        source = tokenizer.get_chat_template()
        _quick_template(source)
        return source
    except Exception:  # no template (apply_chat_template says so) or a transformers without this helper
        return None


@functools.lru_cache(maxsize=16)
def _quick_template(source: str) -> Any:
    """transformers' compiled template, moved into a ``_QuickSandbox`` that shares its settings, filters, globals
    and extensions (an overlay of its environment)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(source)
    if type(compiled.environment) is not ImmutableSandboxedEnvironment:
        return compiled
    environment = compiled.environment.overlay()
    environment.__class__ = _quick_sandbox()
    return environment.from_string(source)


@functools.cache
def _quick_sandbox() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    dict_attributes = frozenset(dir(dict))
    str_methods = frozenset(name for name in dir(str) if not name.startswith("_")) - {"format", "format_map"}

    class _QuickSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, answering at once the two lookups chat templates make most: a message's key
        (``message.role``, or undefined ``message.tool_calls``) and a string method (``content.strip``). The sandbox
        returns the same after checks that cannot fail for these: a plain dict's key that no dict attribute
        shadows, a str method other than the format ones it wraps."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            kind = type(obj)
            if kind is dict and attribute not in dict_attributes:
                return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
            if kind is str and attribute in str_methods:
                return getattr(obj, attribute)
            return super().getattr(obj, attribute)

    return _QuickSandbox
