"""Where user-facing output goes, and how sizes read on it.

Results (tables, reports, where the outputs are, answers) go to stdout through ``stdout``; errors, warnings,
notes and progress go to stderr through ``console``, so ``tunelab ... --json > out.json`` or a pipe gets the
result alone and still shows the user what happens.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)  # long paths and messages stay on one line
stdout = Console(highlight=False, soft_wrap=True)


def human_size(count: float) -> str:
    """Bytes as GiB from a tenth of one, else MiB."""
    gib = 1024**3
    return f"{count / gib:.2f} GiB" if count >= gib / 10 else f"{count / 1024**2:.1f} MiB"


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr for ``total`` items; the block gets ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda count: progress.advance(task, count)
