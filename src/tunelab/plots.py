"""The loss plot of a run, from metrics.jsonl: train and eval loss (log scale when they span orders of
magnitude), the stage's own measures when it logs them (preference stages: reward accuracy and margin;
rm: pair accuracy; train and eval; RL stages: each reward's mean and spread, the KL to the reference and the
clip fraction), the generated-text metrics of predict_with_generate (eval_bleu-4, ...), and the learning rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.metrics import LOWER_IS_BETTER
from tunelab.metrics.text import TEXT_METRICS
from tunelab.runs import PLOT_FILE, read_metrics

LOG_SCALE_RATIO = 20  # max/min loss beyond which a linear axis flattens the interesting part
# What each stage reports about its preferences (TRL's names), drawn in their own panel.
STAGE_MEASURES = ("rewards/accuracies", "rewards/margins", "accuracy", "margin")
# What the RL stages log about their policy (TRL's names, and tunelab's PPO's).
POLICY_MEASURES = ("kl", "clip_ratio", "clip_ratio/region_mean", "completions/clipped_ratio")


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]


def use_log_scale(values: list[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO


def plot_loss(output_dir: str | Path) -> Path | None:
    """Write loss.png; None when nothing was logged."""
    records = read_metrics(output_dir)
    train, evaluation = _series(records, "loss"), _series(records, "eval_loss")
    rates = _series(records, "learning_rate")
    if not train:
        return None
    measures = {f"{prefix}{key}": series for key in STAGE_MEASURES for prefix in ("", "eval_")
                if (series := _series(records, f"{prefix}{key}"))}
    rewards = _reward_series(records)
    policy = {key: series for key in POLICY_MEASURES if (series := _series(records, key))}
    generated = {f"eval_{key}": series for key in (*TEXT_METRICS, "accuracy")
                 if (series := _series(records, f"eval_{key}")) and f"eval_{key}" not in measures}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = [(draw, data) for draw, data in ((_draw_lines, measures), (_draw_rewards, rewards),
                                             (_draw_lines, policy), (_draw_lines, generated)) if data]
    ratios = [3, *[2] * len(extra), 1]
    figure, panels = plt.subplots(len(ratios), 1, figsize=(7, 2 * len(ratios) + 1.5), sharex=True,
                                  gridspec_kw={"height_ratios": ratios})
    loss_axes, lr_axes = panels[0], panels[-1]
    for axes, (draw, data) in zip(panels[1:-1], extra, strict=True):
        draw(axes, data)
    loss_axes.plot(*zip(*train, strict=True), label="train loss")
    if evaluation:
        loss_axes.plot(*zip(*evaluation, strict=True), marker="o", label="eval loss")
        for step, value in evaluation:
            loss_axes.annotate(f"{value:.3g}", (step, value), textcoords="offset points", xytext=(0, 6),
                               ha="center", fontsize=7)
    if use_log_scale([value for _, value in train + evaluation]):
        loss_axes.set_yscale("log")
    loss_axes.set_ylabel("loss" + (" (log scale)" if loss_axes.get_yscale() == "log" else ""))
    loss_axes.set_title(Path(output_dir).name)
    loss_axes.grid(alpha=0.3)
    loss_axes.legend()
    if rates:
        lr_axes.plot(*zip(*rates, strict=True), color="#55a868")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    lr_axes.grid(alpha=0.3)
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    figure.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _reward_series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """name -> (mean series, std series) for the total reward and each reward function."""
    names = ["reward"] + sorted({key[len("rewards/"):-len("/mean")] for r in records for key in r
                                 if key.startswith("rewards/") and key.endswith("/mean")})
    found = {}
    for name in names:
        mean_key, std_key = ("reward", "reward_std") if name == "reward" else (f"rewards/{name}/mean",
                                                                                f"rewards/{name}/std")
        if means := _series(records, mean_key):
            found[name] = (means, _series(records, std_key))
    return found if len(found) > 1 or "reward" in found else {}


def _draw_lines(axes: Any, data: dict[str, list[tuple[int, float]]]) -> None:
    for name, series in data.items():
        axes.plot(*zip(*series, strict=True), marker="o" if name.startswith("eval_") else None, label=name)
    axes.set_ylabel("policy" if "kl" in data or "clip_ratio" in data else
                    "generated text" if any(key.removeprefix("eval_") in TEXT_METRICS for key in data) else
                    "stage measures")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def _draw_rewards(axes: Any, data: dict[str, tuple[list, list]]) -> None:
    """Each reward's mean, with a band of one standard deviation across the batch's answers."""
    for name, (means, stds) in data.items():
        steps, values = zip(*means, strict=True)
        line = axes.plot(steps, values, label=name, linewidth=2 if name == "reward" else 1)[0]
        spread = dict(stds)
        if spread:
            axes.fill_between(steps, [v - spread.get(s, 0.0) for s, v in means],
                              [v + spread.get(s, 0.0) for s, v in means], color=line.get_color(), alpha=0.15)
    axes.set_ylabel("rewards (mean ± std)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def plot_comparison(summaries: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: one group per metric on the [0, 1] scale (perplexity, on its own scale, in a second panel),
    one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summaries)
    shared = [name for name in next(iter(summaries.values()))
              if all(isinstance(s.get(name), (int, float)) for s in summaries.values())
              and name not in ("num_samples", "perplexity", "loss")]
    panels = [shared] + ([["perplexity"]] if all(isinstance(s.get("perplexity"), (int, float))
                                                  for s in summaries.values()) else [])
    figure, axes_list = plt.subplots(1, len(panels), figsize=(max(6, 0.4 * len(shared) * len(labels) ** 0.5 + 3)
                                                                 + 1.5 * (len(panels) - 1), 4),
                                     gridspec_kw={"width_ratios": [max(len(p), 1) for p in panels]}, squeeze=False)
    width = 0.8 / len(labels)
    for axes, names in zip(axes_list[0], panels, strict=True):
        for index, label in enumerate(labels):
            positions = [i + (index - (len(labels) - 1) / 2) * width for i in range(len(names))]
            axes.bar(positions, [summaries[label][name] for name in names], width, label=label)
        ticks = [f"{name} (lower\nis better)" if name in LOWER_IS_BETTER else name for name in names]
        tilted = len(names) > 3
        axes.set_xticks(range(len(names)), ticks, rotation=45 if tilted else 0, ha="right" if tilted else "center")
        axes.grid(axis="y", alpha=0.3)
    axes_list[0][0].set_ylabel("mean over samples")
    axes_list[0][0].legend(fontsize=8)
    figure.suptitle("evaluation: " + " vs ".join(labels), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
