"""One rich console for all user-facing output."""

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)  # long paths and messages stay on one line
