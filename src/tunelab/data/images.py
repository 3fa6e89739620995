"""Images in messages: where they are (content parts, or LLaMA-Factory's ``images`` column with ``<image>``
placeholders), how to open one (a path, ``file://``, a ``data:`` URL; never a download), and the size settings a
part may carry (Qwen2-VL's ``min_pixels``/``max_pixels``, ``resized_height``/``resized_width``).

A problem names the image as given, and the caller adds the file and record; nothing here is silent.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tunelab.errors import TunelabError

PLACEHOLDER = "<image>"  # LLaMA-Factory's mark for "the next image of the row's images goes here"
SIZE_KEYS = ("min_pixels", "max_pixels", "resized_height", "resized_width")


class ImageError(TunelabError):
    """An image that cannot be used: missing, unreadable, remote, or given to a model that reads text only."""


@dataclass(frozen=True)
class ImageRef:
    """One image of a message: where it is and the size settings of its part."""

    source: str
    min_pixels: int | None = None
    max_pixels: int | None = None
    resized_height: int | None = None
    resized_width: int | None = None

    def shown(self) -> str:
        return shown(self.source)


def shown(source: str) -> str:
    """An image as an error names it: a data URL is cut short."""
    return source if len(source) < 80 else source[:60] + "..."


def _size(part: dict[str, Any], key: str) -> int:
    try:
        value = int(part[key])
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ImageError(f"image part: {key} must be a positive whole number of pixels, got {part[key]!r}")
    return value


def _part_source(part: dict[str, Any]) -> str | None:
    if part.get("type") == "image":
        value = part.get("image", part.get("url", part.get("path")))
    elif part.get("type") == "image_url":
        value = part.get("image_url")
        value = value.get("url") if isinstance(value, dict) else value
    else:
        return None
    if not isinstance(value, str) or not value:
        raise ImageError(f"an image part needs its image as a path or URL, got {part!r:.120}")
    return value


def image_refs(messages: list[dict[str, Any]]) -> list[ImageRef]:
    """Every image of the messages, in order."""
    refs = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and (source := _part_source(part)) is not None:
                sizes = {key: _size(part, key) for key in SIZE_KEYS if part.get(key) is not None}
                refs.append(ImageRef(source, **sizes))
    return refs


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a chat template reads them: an image part becomes ``{"type": "image"}`` (the template writes
    its placeholder), a text part ``{"type": "text", "text": ...}``; plain string content stays."""
    shaped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and _part_source(part) is not None:
                    parts.append({"type": "image"})
                elif isinstance(part, dict) and part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        shaped.append(message)
    return shaped


def with_placeholders(messages: list[dict[str, Any]], images: list[str]) -> list[dict[str, Any]]:
    """LLaMA-Factory's form (``<image>`` in the text, the files in ``images``) as content parts: each
    placeholder takes the next image. The counts must match (the data layer checks this per record)."""
    marks = sum(str(m.get("content") or "").count(PLACEHOLDER) for m in messages)
    if marks != len(images):
        raise ImageError(f"{marks} {PLACEHOLDER} placeholder(s) in the messages but {len(images)} image(s) in "
                         "'images'; each placeholder takes the next image")
    pending = list(images)
    shaped = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or PLACEHOLDER not in content:
            shaped.append(message)
            continue
        parts: list[dict[str, Any]] = []
        pieces = content.split(PLACEHOLDER)
        for number, piece in enumerate(pieces):
            if piece:
                parts.append({"type": "text", "text": piece})
            if number < len(pieces) - 1:
                parts.append({"type": "image", "image": pending.pop(0)})
        shaped.append({**message, "content": parts})
    return shaped


def resolve_images(images: list[str], base: Path) -> list[str]:
    """A row's image paths made absolute (relative ones from ``base``, the data file's folder, as LLaMA-Factory
    reads them from its dataset folder); each must exist and be an image (its header is read, not its pixels).
    URLs (``data:``, ``file://``) stay as they are."""
    from PIL import Image, UnidentifiedImageError

    resolved = []
    for source in images:
        if source.startswith(("data:", "file://", "http://", "https://")):
            resolved.append(source)
            continue
        path = Path(source).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ImageError(f"image '{source}' does not exist (looked for {path})")
        try:
            Image.open(path).close()
        except (UnidentifiedImageError, OSError) as error:
            raise ImageError(f"image '{source}' cannot be decoded: {error}") from None
        resolved.append(str(path))
    return resolved


def _opened(source: str) -> Any:
    """A path, ``file://`` or ``data:`` URL as something PIL opens; a remote URL or a missing file is an error."""
    name = shown(source)
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else \
                unquote(payload).encode("latin-1")
        except (binascii.Error, ValueError):
            raise ImageError(f"image '{name}': the data URL is not valid base64") from None
        return io.BytesIO(data)
    if source.startswith(("http://", "https://")):
        raise ImageError(f"image '{name}': remote URLs are not fetched (tunelab works offline); send the image as a "
                         "data URL (data:image/png;base64,...) or a local file path")
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source).expanduser()
    if not path.is_file():
        raise ImageError(f"image '{name}' does not exist")
    return path


def load_image(source: str) -> Any:
    """The image as an RGB PIL image: a path, ``file://`` or a ``data:`` URL. An http(s) URL is refused: tunelab
    does not download (send a data URL, or a local file)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_opened(source)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"image '{shown(source)}' cannot be decoded: {error}") from None


def image_size(source: str) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_opened(source)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"image '{shown(source)}' cannot be decoded: {error}") from None
    return height, width
