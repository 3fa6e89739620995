"""One rich console for all user-facing output."""

from rich.console import Console

console = Console(highlight=False)
