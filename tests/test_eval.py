"""`tunelab eval` end to end, and generated-text metrics during training (predict_with_generate, do_predict).

The demo adapter (examples/demo_lora_sft.yaml, trained here) must beat the embedded base model on the held-out
demo prompts in one comparison table; its perplexity must equal exp of the trainer's own eval loss on the same
data (same loss masks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
HELD_OUT = "demo_stories_heldout"


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_adapter_beats_base_in_one_comparison(demo_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    output = _run("eval", HELD_OUT, "--dataset-dir", str(DATA), "--adapter", str(demo_adapter), "--with-base",
                  "--metrics", "bleu-4,rouge-l,exact_match,perplexity", "--max-new-tokens", "80",
                  "--output-dir", str(out), "--json")
    results = json.loads(output.strip().splitlines()[-1])
    base, tuned = results["systems"]["base (stories260K)"], results["systems"][demo_adapter.name]
    for name in ("bleu-4", "rouge-l", "exact_match"):
        assert tuned[name] > base[name], name
    assert tuned["perplexity"] < base["perplexity"]
    assert base["num_samples"] == tuned["num_samples"] == 24
    assert set(base["corpus"]) == {"bleu", "signatures"}  # only what the chosen metrics need
    # the same loss masks as training: exp(mean token loss) = exp(the trainer's last eval_loss, same model)
    records = [json.loads(line) for line in (demo_adapter / "metrics.jsonl").read_text().splitlines()]
    eval_loss = [r["eval_loss"] for r in records if "eval_loss" in r][-1]
    assert tuned["loss"] == pytest.approx(eval_loss, rel=1e-4)
    assert tuned["perplexity"] == pytest.approx(math.exp(eval_loss), rel=1e-4)
    assert (out / "comparison.png").stat().st_size > 10_000
    assert json.loads((out / "eval_results.json").read_text()) == results
    samples = [json.loads(line) for line in (out / f"samples-{demo_adapter.name}.jsonl").read_text().splitlines()]
    assert len(samples) == 24 and {"prompt", "reference", "prediction", "bleu-4", "rouge-l", "exact_match",
                                   "loss"} <= set(samples[0])
    table = _run("eval", "--predictions", str(out / "predictions-base_stories260K.jsonl"), "--predictions",
                 str(out / f"predictions-{demo_adapter.name}.jsonl"), "--metrics", "bleu-4",
                 "--output-dir", str(tmp_path / "again"))
    assert "predictions-base_stories260K" in table and "bleu-4" in table and "comparison.png" in table
    again = json.loads((tmp_path / "again" / "eval_results.json").read_text())["systems"]
    assert again[f"predictions-{demo_adapter.name}"]["bleu-4"] == pytest.approx(tuned["bleu-4"])


def test_predictions_file_with_several_references_and_llamafactory_names(tmp_path: Path) -> None:
    rows = [{"prompt": "p1", "prediction": "the cat sat on the mat", "reference": ["a dog", "the cat sat on the mat"]},
            {"prompt": "p2", "predict": "hello to the whole wide world",  # LLaMA-Factory's names
             "label": "hello to the whole wide world"}]
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = _run("eval", "--predictions", str(path), "--metrics", "bleu-4,exact_match,chrf,ter", "--json",
                  "--output-dir", str(tmp_path / "out"))
    results = json.loads(output.strip().splitlines()[-1])
    assert results["exact_match"] == 1.0 and results["bleu-4"] == pytest.approx(1.0)
    assert results["num_samples"] == 2 and results["ter"] == 0.0
    assert set(results["corpus"]) == {"bleu", "chrf", "ter", "signatures"}
    samples = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    assert json.loads(samples[0])["reference"] == ["a dog", "the cat sat on the mat"]


def test_gsm8k_predictions_get_accuracy_by_default(tmp_path: Path) -> None:
    gold = "Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18"
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"prediction": "The answer is 18.", "reference": gold}) + "\n"
                    + json.dumps({"prediction": "She makes 20 dollars.", "reference": gold}) + "\n")
    results = json.loads(_run("eval", "--predictions", str(path), "--json", "--output-dir",
                              str(tmp_path / "o")).strip().splitlines()[-1])
    assert results["accuracy"] == 0.5 and results["settings"]["task"] == "gsm8k"
    first = json.loads((tmp_path / "o" / "samples.jsonl").read_text().splitlines()[0])
    assert first["answer"] == {"correct": True, "extracted": "18", "rule": "answer is", "gold": "18"}


@pytest.mark.slow
def test_predict_with_generate_logs_generation_metrics(tmp_path: Path) -> None:
    from tunelab.stages.sft import run_sft

    out = tmp_path / "run"
    cfg = load_config(REPO / "examples" / "stories_sft_predict.yaml", [
        f"output_dir={out}", f"dataset_dir={DATA}", "max_steps=6", "eval_steps=3", "generation_max_samples=4",
        "generation_max_new_tokens=16", "generation_metrics=bleu-4,rouge-l,chrf"])
    run_sft(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    generated = [r for r in records if "eval_bleu-4" in r]
    assert [r["step"] for r in generated] == [3, 6]
    assert all(0 <= r[key] <= 1 for r in generated for key in ("eval_bleu-4", "eval_rouge-l", "eval_chrf"))
    assert len((out / "eval_generations" / "step-3.jsonl").read_text().splitlines()) == 4
    assert len((out / "generated_predictions.jsonl").read_text().splitlines()) == 4
    results = json.loads((out / "predict_results.json").read_text())
    assert set(results) == {"predict_bleu-4", "predict_rouge-l", "predict_chrf"}
    # the last evaluation and do_predict generate with the same final model: same text, same scores
    assert results["predict_bleu-4"] == pytest.approx(generated[-1]["eval_bleu-4"])
    assert (out / "loss.png").is_file()


def test_skipped_records_are_counted_and_said(tmp_path: Path) -> None:
    output = _run("eval", str(DATA / "messy_stories.jsonl"), "--skip-invalid", "--max-new-tokens", "4",
                  "--metrics", "exact_match", "--json", "--output-dir", str(tmp_path))
    for reason in ("missing field", "empty answer", "invalid JSON"):
        assert f"skipped 1 records of {DATA / 'messy_stories.jsonl'}: {reason}" in output.replace("\n", " ")
    assert json.loads(output.strip().splitlines()[-1])["num_samples"] == 5
