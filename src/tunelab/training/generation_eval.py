"""Generation metrics while training (stage sft): ``predict_with_generate`` and ``do_predict``.

Eval loss says how likely the reference answers are; users of the ChatGLM P-Tuning and LLaMA-Factory recipes
also judge a run by what it writes. With ``predict_with_generate`` each evaluation generates answers to the
held-out prompts (greedy, through the same ``Predictor`` as ``tunelab predict``) and logs
``generation_metrics`` as ``eval_bleu-4``, ``eval_rouge-l``, ... beside ``eval_loss`` in metrics.jsonl and the
plot. ``do_predict`` does the same once after training and writes ``generated_predictions.jsonl`` and
``predict_results.json`` (``predict_bleu-4``, ...) into output_dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.config import TrainConfig
from tunelab.console import console, progress_bar, stdout
from tunelab.inference.predict import Sample, split_prompt, write_predictions
from tunelab.inference.predictor import Predictor
from tunelab.metrics import parse_metrics
from tunelab.metrics.scoring import resolve_task, score_predictions
from tunelab.training.generation_keys import GenerationKeys

PREDICTIONS_FILE = "generated_predictions.jsonl"
PREDICT_RESULTS_FILE = "predict_results.json"


def held_out_samples(rows: list[dict], limit: int | None) -> list[Sample]:
    """(prompt messages, reference, tools) of the held-out SFT rows: the last answer is the reference."""
    samples = [(*split_prompt(row["messages"]), row.get("tools")) for row in rows]
    return samples[:limit] if limit else samples


def generate_and_score(model: Any, tokenizer: Any, samples: list[Sample], cfg: TrainConfig, keys: GenerationKeys,
                       output: Path) -> dict[str, float | None]:
    """Generate for the samples with the model as it is now, write them to ``output`` (predict's JSONL), and
    return the metric means."""
    was_training = model.training
    model.eval()
    try:
        predictor = Predictor.from_loaded(model, tokenizer, cfg.model_name_or_path,
                                          max_new_tokens=keys.generation_max_new_tokens)
        with progress_bar("predicting", len(samples)) as advance:
            write_predictions(predictor, samples, output, batch_size=cfg.per_device_eval_batch_size,
                              on_batch=advance)
    finally:
        model.train(was_training)
    from tunelab.evaluation.run import read_predictions

    predictions, references, _ = read_predictions(str(output))
    scores = score_predictions(predictions, references, parse_metrics(keys.generation_metrics))
    for note in scores.summary.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    return {name: value for name, value in scores.summary.items() if isinstance(value, (int, float))
            and name != "num_samples"}


class GenerationMetricsCallback(TrainerCallback):
    """After each evaluation: generate for the held-out prompts and log the generation metrics (``eval_*``)."""

    def __init__(self, trainer: Any, cfg: TrainConfig, keys: GenerationKeys, samples: list[Sample]):
        self.trainer, self.cfg, self.keys, self.samples = trainer, cfg, keys, samples

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        output = Path(args.output_dir) / "eval_generations" / f"step-{state.global_step}.jsonl"
        values = generate_and_score(self.trainer.model, self.trainer.processing_class, self.samples, self.cfg,
                                    self.keys, output)
        self.trainer.log({f"eval_{name}": value for name, value in values.items()})


def check_generation_task(keys: GenerationKeys, eval_rows: list[dict]) -> None:
    """An accuracy whose held-out references are no task is refused before the run starts (and by --dry-run),
    not at the first evaluation."""
    samples = held_out_samples(eval_rows, keys.generation_max_samples)
    resolve_task(None, [reference for _, reference, _ in samples], parse_metrics(keys.generation_metrics))


def attach_generation_metrics(trainer: Any, cfg: TrainConfig, eval_rows: list[dict]) -> None:
    """Add the callback when the stage has generation keys and the run asks for predict_with_generate."""
    keys = cfg.keys_of(GenerationKeys)
    if keys and keys.predict_with_generate and eval_rows:
        samples = held_out_samples(eval_rows, keys.generation_max_samples)
        trainer.add_callback(GenerationMetricsCallback(trainer, cfg, keys, samples))


def predict_after_training(model: Any, tokenizer: Any, cfg: TrainConfig, eval_rows: list[dict]) -> Path | None:
    """do_predict: generated_predictions.jsonl and predict_results.json in output_dir; their path, or None."""
    keys = cfg.keys_of(GenerationKeys)
    if keys is None or not keys.do_predict or not eval_rows:
        return None
    out = Path(cfg.output_dir)
    samples = held_out_samples(eval_rows, keys.generation_max_samples)
    console.print(f"[bold]predict[/bold] generating answers to {len(samples)} held-out prompts ...")
    values = generate_and_score(model, tokenizer, samples, cfg, keys, out / PREDICTIONS_FILE)
    results = {f"predict_{name}": value for name, value in values.items()}
    (out / PREDICT_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    stdout.print("[bold]predict[/bold] " + "  ".join(f"{name} {value:.4f}" for name, value in results.items()))
    return out / PREDICT_RESULTS_FILE
