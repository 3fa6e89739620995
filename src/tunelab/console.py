"""One rich console for all user-facing output, and how sizes read on it."""

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)  # long paths and messages stay on one line


def human_size(count: float) -> str:
    """Bytes as GiB from a tenth of one, else MiB."""
    gib = 1024**3
    return f"{count / gib:.2f} GiB" if count >= gib / 10 else f"{count / 1024**2:.1f} MiB"
