"""`tunelab rewards list` and `tunelab rewards score`: the reward functions, tried on hand-written answers.

``score`` reads rows holding a ``completion`` (text or a list of messages), an optional ``prompt`` and any other
columns (a gold ``answer``, ``gold_answers``), calls each reward exactly as a trainer would, and prints each
function's value and the weighted total per row. Mistakes in the reward list or the settings are reported
before the file is read, and the file's mistakes before any model loads.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.console import stdout
from tunelab.data.readers import InvalidRecord, read_records
from tunelab.errors import ConfigError, DataError, RewardError
from tunelab.rewards.registry import check_reward_specs, describe_rewards, load_rewards, score_rewards
from tunelab.rewards.settings import RewardSettings
from tunelab.rewards.text import TRAINER_ARGUMENTS

OWN_FIELDS = ("prompt", "completion", "completion_ids")  # not passed as columns, as in TRL
FLAGS = {"reward_funcs": "--reward-funcs", "reward_weights": "--reward-weights", "reward_model": "--reward-model"}


@dataclass
class Row:
    file: Path
    line: int
    prompt: Any
    completion: Any
    columns: dict[str, Any]


@dataclass
class Scores:
    rows: list[Row]
    values: dict[str, list[float]]
    totals: list[float]


def print_reward_list(as_json: bool = False) -> None:
    rewards = describe_rewards()
    if as_json:
        print(json.dumps([{"name": name, "summary": summary} for name, summary in rewards], indent=2))
        return
    from rich.markup import escape

    width = max(len(name) for name, _ in rewards)
    for name, summary in rewards:
        stdout.print(f"[bold]{name:<{width}}[/bold]  {escape(summary)}")
    stdout.print("\nyour own: path/to/file.py:function or module:function (see docs/rewards.md)", style="dim")


def reward_settings(reward_funcs: str, reward_weights: str | None, reward_model: str | None,
                    overrides: list[str]) -> RewardSettings:
    """The settings from the flags and ``--set key=value`` pairs, with the config's error style."""
    values: dict[str, Any] = {"reward_funcs": reward_funcs, "reward_weights": reward_weights,
                              "reward_model": reward_model}
    known = [key for key in RewardSettings.model_fields if key not in FLAGS]
    for item in overrides:
        key, sign, value = item.partition("=")
        key = key.strip().removeprefix("--").replace("-", "_")
        if not sign or not key:
            raise ConfigError(f"--set '{item}': give key=value, e.g. --set length_target_chars=400")
        if key not in known:
            match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            raise ConfigError(f"--set: unknown key '{key}'" + (f"; did you mean '{match[0]}'?" if match else "")
                              + f" (keys: {', '.join(known)})")
        values[key] = None if value.strip().lower() in ("", "none", "null") else value.strip()
    try:
        return RewardSettings.model_validate(values)
    except ValidationError as error:
        raise ConfigError("; ".join(
            f"{FLAGS.get(str(item['loc'][0]), '--set ' + str(item['loc'][0]))}: {item['msg']} (got "
            f"{item.get('input')!r})" for item in error.errors())) from None


def read_rows(path: str | Path) -> list[Row]:
    """Every row of the file, each with a completion; a bad row names the file, line and field."""
    rows = []
    for file, line, record in read_records(Path(path)):
        if isinstance(record, InvalidRecord):
            raise record.error(file, line)
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object with a 'completion', got {type(record).__name__}",
                            file=str(file), line=line)
        if "completion" not in record:
            raise DataError("missing: each row needs the completion to score (text or a list of messages)",
                            file=str(file), line=line, field="completion")
        completion = record["completion"]
        if not isinstance(completion, str) and not (isinstance(completion, list) and completion and all(
                isinstance(m, dict) and "content" in m for m in completion)):
            raise DataError("must be text or a list of messages ({\"role\": \"assistant\", \"content\": ...})",
                            file=str(file), line=line, field="completion")
        reserved = sorted(set(record) & set(TRAINER_ARGUMENTS))
        if reserved:
            raise DataError("this column name is reserved for the trainer's own arguments; rename it",
                            file=str(file), line=line, field=reserved[0])
        rows.append(Row(file, line, record.get("prompt"), completion,
                        {k: v for k, v in record.items() if k not in OWN_FIELDS}))
    if not rows:
        raise DataError("no rows to score", file=str(path))
    return rows


def score_file(path: str | Path, settings: RewardSettings) -> Scores:
    check_reward_specs(settings.reward_funcs, settings.reward_weights, settings.reward_model)
    rows = read_rows(path)
    functions = load_rewards(settings.reward_funcs, settings)
    names = list(dict.fromkeys(key for row in rows for key in row.columns))
    columns = {name: [row.columns.get(name) for row in rows] for name in names}
    try:
        values, totals = score_rewards(functions, settings.reward_weights, [row.prompt for row in rows],
                                       [row.completion for row in rows], columns)
    except RewardError as error:
        if error.sample is None:
            raise
        row = rows[error.sample]
        raise RewardError(f"{row.file}, line {row.line}: {error}", sample=error.sample) from None
    return Scores(rows, values, totals)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _shown(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _mean(values: list[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return sum(present) / len(present) if present else math.nan


def print_scores(scores: Scores, as_json: bool = False) -> None:
    names = list(scores.values)
    if as_json:
        for index in range(len(scores.rows)):
            print(json.dumps({"rewards": {name: _number(scores.values[name][index]) for name in names},
                              "total": _number(scores.totals[index])}))
        return
    from rich.table import Table
    from rich.text import Text

    from tunelab.rewards.text import completion_text

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("line", justify="right", no_wrap=True)
    table.add_column("completion", overflow="ellipsis", no_wrap=True, min_width=12, max_width=40)
    widths = [max(len(name), 7) for name in [*names, "total"]]
    for name, width in zip([*names, "total"], widths, strict=True):
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    needed = max(4, *(len(str(row.line)) for row in scores.rows)) + 40 + sum(widths) + 3 * (len(widths) + 1)
    for index, row in enumerate(scores.rows):
        text = " ".join(completion_text(row.completion).split())
        table.add_row(str(row.line), Text(text), *(_shown(scores.values[name][index]) for name in names),
                      _shown(scores.totals[index]))
    if needed <= stdout.width:
        stdout.print(table)
    else:  # a narrow terminal wraps the rows rather than rich hiding columns
        from rich.console import Console

        Console(width=needed, highlight=False).print(table)
    means = "  ".join(f"{name} {_shown(_mean(scores.values[name]))}" for name in names)
    stdout.print(f"mean over {len(scores.rows)} rows: {means}  total {_shown(_mean(scores.totals))}", markup=False)
