"""The loss plot of a run: train and eval loss (log scale when they span orders of magnitude) and the
learning rate in a second panel, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tunelab.runs import PLOT_FILE, read_metrics

LOG_SCALE_RATIO = 20  # max/min loss beyond which a linear axis flattens the interesting part


def use_log_scale(values: list[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO


def plot_loss(output_dir: str | Path) -> Path | None:
    """Write loss.png; None when nothing was logged."""
    records = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evaluation = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    rates = [(r["step"], r["learning_rate"]) for r in records if isinstance(r.get("learning_rate"), (int, float))]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                                gridspec_kw={"height_ratios": [3, 1]})
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
