"""The loss plot of a run, from metrics.jsonl: train and eval loss (log scale when they span orders of
magnitude), the stage's own measures when it logs them (preference stages: reward accuracy and margin;
rm: pair accuracy; train and eval), and the learning rate."""

from __future__ import annotations

from pathlib import Path

from tunelab.runs import PLOT_FILE, read_metrics

LOG_SCALE_RATIO = 20  # max/min loss beyond which a linear axis flattens the interesting part
# What each stage reports about its preferences (TRL's names), drawn in their own panel.
STAGE_MEASURES = ("rewards/accuracies", "rewards/margins", "accuracy", "margin")


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [3, 2, 1] if measures else [3, 1]
    figure, panels = plt.subplots(len(ratios), 1, figsize=(7, 2 * len(ratios) + 1.5), sharex=True,
                                  gridspec_kw={"height_ratios": ratios})
    loss_axes, lr_axes = panels[0], panels[-1]
    if measures:
        for name, series in measures.items():
            panels[1].plot(*zip(*series, strict=True), marker="o" if name.startswith("eval_") else None, label=name)
        panels[1].set_ylabel("stage measures")
        panels[1].grid(alpha=0.3)
        panels[1].legend(fontsize=7)
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
