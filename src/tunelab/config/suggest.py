"""The "did you mean" hint of every unknown-key and unknown-name message of the config."""

from __future__ import annotations

import difflib


def suggest(key: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else "; run `tunelab config` to list every key"
