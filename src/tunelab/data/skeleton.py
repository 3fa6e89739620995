"""Plain conversations rendered by filling in a skeleton: the chat template runs once per shape, not once per row.

A conversation's shape is its roles, whether the generation prompt is added, and the template's variables. For each
shape the template is rendered once with markers for contents: ``_Traced`` strings that record every question the
template asks of a content (``'</think>' in content``, ``content.startswith(...)``, ``content.strip()``, ``content
== ''``, its truth, its length...), and what the answer was. A conversation of that shape is the skeleton with each
marker replaced by its content, when every recorded question gets the same answer from the real contents (checked
per conversation: a few string operations). Otherwise it is rendered as usual.

A shape renders as usual for good when the template does to a content what a marker cannot stand for: takes a
character or a slice of it, changes its case, escapes it or writes it as JSON (the marker has a quote, a backslash,
``<`` and ``&``, so an escaped or JSON copy no longer matches it). Templates that raise for a shape do so again in the
usual render. ``tests/test_masking.py`` holds the result to the template's own render on every real and Hugging Face
template, with contents chosen to trip each question.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: no text to train on has them
_MARKER = re.compile(f'({_OPEN}Mk"\\\\\\\\<&(\\d+){_CLOSE})')
_MAX_SHAPES = 512


class _Opaque(Exception):
    """The template did something to a content that a marker cannot stand for."""


Question = tuple[Any, str, tuple, Any]  # (the str operation, the string asked, its arguments, the answer)


class _Recorder(threading.local):
    questions: list[Question] | None = None


_recorder = _Recorder()


def _marker(index: int) -> str:
    return f'{_OPEN}Mk"\\\\<&{index}{_CLOSE}'


def _traced(value: Any) -> Any:
    """String results stay traced (their questions are recorded too); lists and tuples of them alike."""
    if type(value) is str:
        return _Traced(value)
    if type(value) in (list, tuple):
        return type(value)(_traced(item) for item in value)
    return value


def _truth(text: str) -> bool:
    return bool(len(text))


def _asked(name: str, method: Any = None) -> Any:
    method = method or getattr(str, name)

    def ask(self: str, *args: Any) -> Any:
        answer = method(str(self), *args)
        if _recorder.questions is None:  # a marker used outside its render
            raise _Opaque(name)
        _recorder.questions.append((method, str(self), tuple(_plain(arg) for arg in args), _plain(answer)))
        return _traced(answer)

    ask.__name__ = name
    return ask


def _refused(name: str) -> Any:
    def refuse(self: str, *args: Any, **kwargs: Any) -> Any:
        raise _Opaque(name)

    # not the method's own name: the sandbox formats a str whose bound ``format``/``format_map`` it is given itself
    refuse.__name__ = f"refused_{name}"
    return refuse


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)
    if type(value) in (list, tuple):
        return type(value)(_plain(item) for item in value)
    return value


class _Traced(str):
    """A content marker that records the template's questions (see the module docstring)."""

    __slots__ = ()
    __hash__ = str.__hash__

    def __str__(self) -> str:  # writing it out, and joining it (``~``), is what a marker is for
        return str.__str__(self)

    def __add__(self, other: Any) -> Any:
        return _Traced(str.__add__(self, other)) if isinstance(other, str) else NotImplemented

    def __radd__(self, other: Any) -> Any:
        return _Traced(str.__add__(other, self)) if isinstance(other, str) else NotImplemented

    __bool__ = _asked("__bool__", _truth)


_ASKED = ("__contains__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__len__", "__mul__",
          "__rmul__", "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
          "partition", "rpartition", "find", "rfind", "index", "rindex", "count", "replace", "isspace", "isdigit",
          "isalpha", "isalnum", "isupper", "islower", "istitle", "isnumeric", "isdecimal", "isidentifier",
          "isprintable", "isascii", "removeprefix", "removesuffix")
for _name in (*_ASKED, *(name for name in dir(str) if name not in _ASKED and not name.startswith("_")),
              "__getitem__", "__iter__", "__mod__", "__rmod__", "__format__", "__getnewargs__"):
    setattr(_Traced, _name, _asked(_name) if _name in _ASKED else _refused(_name))


class Skeleton:
    """One shape's rendered text, cut at the markers, and the questions the template asked of the contents."""

    def __init__(self, text: str, questions: list[Question]):
        pieces = _MARKER.split(str.__str__(text))
        self.literals = pieces[0::3]
        self.slots = [int(index) for index in pieces[2::3]]
        self.questions = questions
        if any(_OPEN in part or _CLOSE in part for part in self.literals) or any(
                _partial(answer) for *_, answer in questions):
            raise _Opaque("a content was changed, cut or escaped")

    def fill(self, contents: list[str]) -> str | None:
        """The conversation with these contents, or None where a question gets another answer from them."""
        for method, asked_of, args, answer in self.questions:
            real = method(_filled(asked_of, contents), *(_filled(arg, contents) for arg in args))
            if real != _filled(answer, contents):
                return None
        parts = [self.literals[0]]
        for slot, literal in zip(self.slots, self.literals[1:], strict=True):
            parts += (contents[slot], literal)
        return "".join(parts)


def _filled(value: Any, contents: list[str]) -> Any:
    if isinstance(value, str):
        return _MARKER.sub(lambda match: contents[int(match.group(2))], value) if _OPEN in value else value
    if type(value) in (list, tuple):
        return type(value)(_filled(item, contents) for item in value)
    return value


def _partial(value: Any) -> bool:
    """An answer that holds part of a marker (a slice, a character): the real content's answer cannot be mapped."""
    if isinstance(value, str):
        rest = _MARKER.sub("", value)
        return _OPEN in rest or _CLOSE in rest
    return type(value) in (list, tuple) and any(_partial(item) for item in value)


_shapes: dict[tuple, Skeleton | None] = {}
_UNBUILT = object()


def render_by_skeleton(source: str, messages: list[dict], add_generation_prompt: bool,
                       variables: dict[str, Any]) -> str | None:
    """The chat template ``source`` rendered for these plain role/content messages, from the shape's skeleton; None
    where the skeleton cannot stand for this conversation (the caller renders)."""
    roles = tuple(message["role"] for message in messages)
    key = (source, roles, add_generation_prompt, tuple(variables.items()))
    try:
        skeleton = _shapes.get(key, _UNBUILT)
    except TypeError:  # a list among the variables (additional special tokens)
        key = (source, roles, add_generation_prompt, _frozen(variables))
        skeleton = _shapes.get(key, _UNBUILT)
    if skeleton is _UNBUILT:
        if len(_shapes) >= _MAX_SHAPES:
            _shapes.clear()
        skeleton = _shapes[key] = _skeleton(source, messages, add_generation_prompt, variables)
    return None if skeleton is None else skeleton.fill([message["content"] for message in messages])


def _skeleton(source: str, messages: list[dict], add_generation_prompt: bool,
              variables: dict[str, Any]) -> Skeleton | None:
    markers = [{"role": message["role"], "content": _Traced(_marker(index))} for index, message in enumerate(messages)]
    _recorder.questions = questions = []
    try:
        text = _tracing_template(source).render(messages=markers, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
        return Skeleton(text, questions)
    except Exception:  # _Opaque, or the template's own error for this shape, which the usual render raises again
        return None
    finally:
        _recorder.questions = None


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    return value


def _join(pieces: Any) -> str:
    """Jinja's string joins (output, macro results, ``{% set %}`` blocks, ``~``): text built from a marker stays
    traced, so that what the template later asks of it is recorded too."""
    text = "".join(pieces)
    return _Traced(text) if _OPEN in text else text


# Filters and tests that may be given a marker's text: what they do to it is a traced string operation, a copy that
# no longer matches the marker (escaping, JSON), or no look at the text at all. Any other (``wordcount``, ``int``,
# ``wordwrap``, the ``lower`` test...) reads the text where no question is recorded, so the shape renders as usual.
_SAFE_FILTERS = frozenset(("trim", "replace", "default", "d", "string", "safe", "e", "escape", "forceescape",
                           "tojson", "length", "count", "join", "indent", "map", "select", "reject", "selectattr",
                           "rejectattr", "list", "first", "last", "items", "upper", "lower", "title", "capitalize"))
_SAFE_TESTS = frozenset(("string", "defined", "undefined", "none", "mapping", "iterable", "sequence", "number",
                         "boolean", "true", "false", "eq", "equalto", "==", "ne", "!=", "in", "sameas", "callable",
                         "integer", "float", "filter", "test"))


def _holds_marker(value: Any) -> bool:
    if isinstance(value, str):
        return str.__contains__(value, _OPEN)  # not ``in``: a traced string would record this as a question
    return type(value) in (list, tuple) and any(_holds_marker(item) for item in value)


def _tracing(name: str, function: Any, safe: frozenset[str]) -> Any:
    @functools.wraps(function)  # keeps jinja's pass_context/pass_eval_context marks
    def traced(*args: Any, **kwargs: Any) -> Any:
        if name not in safe and any(map(_holds_marker, (*args, *kwargs.values()))):
            raise _Opaque(name)
        result = function(*args, **kwargs)
        return _Traced(result) if isinstance(result, str) and str.__contains__(result, _OPEN) else result

    return traced


@functools.lru_cache(maxsize=16)
def _tracing_template(source: str) -> Any:
    """The template compiled for skeletons: the quick template's environment, with string joins and filter results
    that keep a marker's text traced."""
    from tunelab.data.templates import _quick_template

    environment = _quick_template(source).environment.overlay()
    environment.concat = _join  # the compiled module binds ``concat = environment.concat``
    environment.filters = {name: _tracing(name, function, _SAFE_FILTERS)
                           for name, function in environment.filters.items()}
    environment.tests = {name: _tracing(name, function, _SAFE_TESTS) for name, function in environment.tests.items()}
    template = environment.from_string(source)
    namespace = template.root_render_func.__globals__  # the compiled module's own names (``~`` is str_join)
    namespace["str_join"] = lambda seq: _join(map(str, seq))
    namespace["markup_join"] = lambda seq: _join(map(str, seq))
    return template
