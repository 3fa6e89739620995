"""Whether the Hugging Face hub can be used, learnt once and quickly.

Without network, huggingface_hub and transformers retry each download for tens of seconds before they fail;
a user who mistyped a path should hear so in about a second. No import of torch or transformers here.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from urllib.parse import urlparse

CONNECT_TIMEOUT = 1.5  # seconds for the one connection attempt that tells whether the hub is there
PROBE_TTL = 60.0  # seconds an answer holds
_probe: list = []  # [when, answer] of the last probe


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def go_offline() -> None:
    """Tell huggingface_hub (and transformers through it) not to try the network again in this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable once, at import
        constants.HF_HUB_OFFLINE = True


def hub_unreachable() -> str | None:
    """Why the hub (or the proxy in front of it) cannot be reached, or None when it answers a TCP connect.

    One bounded attempt, so a machine without network learns it in about a second instead of after the
    libraries' retries (tens of seconds); the answer is reused for a minute, not for the life of a notebook."""
    now = time.monotonic()
    if _probe and now - _probe[0] < PROBE_TTL:
        return _probe[1]
    _probe[:] = [now, _connect()]
    return _probe[1]


def _connect() -> str | None:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    target = urlparse(proxy) if proxy and "://" in proxy else endpoint
    host = target.hostname or "huggingface.co"
    port = target.port or (80 if target.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        return f"{host}: {error.strerror or error}"
    return None
