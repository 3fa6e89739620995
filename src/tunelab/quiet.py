"""Library chatter kept off the console and in a log file.

transformers, peft, trl, bitsandbytes and kernels warn about things a tunelab user cannot act on (a kernel
not fetched offline, a deprecation inside a library, a tie-weights note tunelab handles itself). Their
warnings and Python warnings go to one log file (``~/.cache/tunelab/library.log``, or ``TUNELAB_LOG_FILE``);
their errors still reach the console. transformers' own warnings are silenced at the source
(``TRANSFORMERS_VERBOSITY=error``, set before it loads), so they show in neither. Called by every command and
by the Python API's entry points, never at import; warning filters (``-W``) are left as they are.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets", "huggingface_hub", "bitsandbytes", "kernels",
             "torch", "gguf", "jieba", "py.warnings")
_done = False


class _Stderr(logging.Handler):
    """Errors to whatever sys.stderr is when they happen (a test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except (OSError, ValueError):
            pass


def log_file() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunelab" / "library.log"
    return Path(os.environ.get("TUNELAB_LOG_FILE") or default)


def quiet_libraries() -> None:
    """Send the libraries' warnings (and Python warnings) to ``log_file()``; errors still show."""
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # transformers' own console handler, if it loads
    handler: logging.Handler
    try:
        path = log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024**2, backupCount=1, encoding="utf-8")
    except OSError:  # a read-only home: drop the chatter rather than fail
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    console = _Stderr()
    console.setLevel(logging.ERROR)
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.addHandler(handler)
        if name != "transformers":  # transformers prints its errors through its own handler
            logger.addHandler(console)
        logger.propagate = False
    if "transformers" in sys.modules:  # imported already: its own console handler would still print warnings
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_default_handler()
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the file (filters unchanged)
