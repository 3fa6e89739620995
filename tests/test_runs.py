"""The run directory tells the truth about one run: resume, overwrite, failed starts, interrupts, cards.

Each test names the numbered finding of the run-reliability issue it proves; all train the embedded
model for a few steps on the demo stories.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.runs import CHECKPOINT_CONFIG, RunDir, checkpoints, read_metrics
from tunelab.stages.sft import run_sft

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo_lora_sft.yaml"
DEMO_DATA = REPO / "examples" / "data"

pytestmark = pytest.mark.slow


def _cfg(output_dir: Path, *overrides: str):
    base = [f"output_dir={output_dir}", f"dataset_dir={DEMO_DATA}", "max_samples=48", "logging_steps=1",
            "report_to=none", "per_device_train_batch_size=4", "plot_loss=false"]
    return load_config(DEMO, [*base, *overrides])


def _steps(output_dir: Path) -> list[int]:
    return [record["step"] for record in read_metrics(output_dir) if "loss" in record]


def _losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(output_dir) if "loss" in record]


# --- 1 and 3: a resume continues only the same run ---------------------------------------------------

def test_resume_with_other_settings_is_refused_before_anything_is_touched(tmp_path):
    out = tmp_path / "run"
    run_sft(_cfg(out, "max_steps=10", "save_steps=5"))
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    for change in ("learning_rate=1e-4", "lora_rank=4"):
        with pytest.raises(ConfigError) as error:
            run_sft(_cfg(out, "max_steps=10", "save_steps=5", change, "overwrite_output_dir=true",
                         "resume_from_checkpoint=last"))
        key = change.split("=")[0]
        assert f"{key}:" in str(error.value) and "checkpoint-10" in str(error.value)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert [c.name for c in checkpoints(out)] == ["checkpoint-5", "checkpoint-10"]


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path, capsys):
    out = tmp_path / "run"
    run_sft(_cfg(out, "max_steps=10", "save_steps=5"))
    metrics = (out / "metrics.jsonl").read_text()
    result = run_sft(_cfg(out, "max_steps=10", "save_steps=5", "overwrite_output_dir=true",
                          "resume_from_checkpoint=last"))
    assert result.global_step == 10 and "already complete" in capsys.readouterr().err
    assert [c.name for c in checkpoints(out)] == ["checkpoint-5", "checkpoint-10"]  # no checkpoint-11
    assert (out / "metrics.jsonl").read_text() == metrics
    # Raising max_steps (a key a resume may change) continues the same run from checkpoint-10.
    longer = run_sft(_cfg(out, "max_steps=14", "save_steps=5", "resume_from_checkpoint=last"))
    assert longer.global_step == 14 and "resuming from" in capsys.readouterr().err
    assert _steps(out) == list(range(1, 15))


def test_overwrite_without_resume_gives_a_clean_folder(tmp_path):
    out = tmp_path / "run"
    run_sft(_cfg(out, "max_steps=10", "save_steps=5", "plot_loss=true"))
    assert (out / "loss.png").is_file()
    run_sft(_cfg(out, "max_steps=3", "save_steps=100", "overwrite_output_dir=true"))
    assert [c.name for c in checkpoints(out)] == ["checkpoint-3"] and _steps(out) == [1, 2, 3]  # the final save
    assert not (out / "loss.png").exists()  # this run did not plot; the old plot is gone with the old run
    with pytest.raises(ConfigError, match="already holds a run"):
        run_sft(_cfg(out, "max_steps=3", "overwrite_output_dir=false"))


def test_checkpoints_carry_their_config_and_sort_by_step(tmp_path):
    out = tmp_path / "run"
    for step in (100, 20, 5):  # item 9: text order would be 100, 20, 5
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "checkpoint-7").mkdir()  # incomplete (no trainer state): never a resume target
    assert [c.name for c in checkpoints(out)] == ["checkpoint-5", "checkpoint-20", "checkpoint-100"]
    saved = tmp_path / "saved"
    run_sft(_cfg(saved, "max_steps=4", "save_steps=2"))
    for checkpoint in checkpoints(saved):
        assert load_config(checkpoint / CHECKPOINT_CONFIG) == load_config(saved / "config.yaml")


# --- 2: a failed start never blocks the next one ----------------------------------------------------

def test_failed_starts_write_nothing_and_never_block(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="neither a name"):
        run_sft(_cfg(out, "dataset=no_such_dataset"))
    with pytest.raises(DataError, match="every train sample was dropped"):
        run_sft(_cfg(out, "cutoff_len=3", "cutoff_policy=drop"))
    assert not out.exists()
    # A start that got as far as writing its config (then failed loading the model) is no run to keep.
    out.mkdir()
    (out / "config.yaml").write_text("stage: sft\n")
    (out / "data_report.json").write_text("{}")
    assert run_sft(_cfg(out, "max_steps=2")).global_step == 2


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir(_cfg(target))


# --- 4: the simplest config -------------------------------------------------------------------------

def test_embedded_model_without_template_trains(tmp_path):
    data = DEMO_DATA / "demo_stories.json"
    cfg = load_config(None, [f"dataset={data}", f"output_dir={tmp_path / 'run'}", "max_steps=2", "max_samples=8"])
    assert cfg.template is None and cfg.model_name_or_path == "stories260K"
    assert run_sft(cfg).global_step == 2
    assert "Assistant:" in (tmp_path / "run" / "chat_template.jinja").read_text()  # the built-in 'default'


# --- 8: a copied adapter finds its base; the card tells the truth -------------------------------------

def test_adapter_names_its_base_portably_and_the_card_is_true(tmp_path):
    out = tmp_path / "run"
    run_sft(_cfg(out, "max_steps=3", "save_steps=2"), command="tunelab train demo.yaml")
    for folder in (out, out / "checkpoint-2"):
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "stories260K"
    card = (out / "README.md").read_text()
    assert "base_model: stories260K" in card and "[None]" not in card
    assert "demo_stories" in card and "tunelab train demo.yaml" in card and "3 optimizer steps" in card

    import shutil

    from tunelab.inference.predictor import Predictor

    copied = shutil.copytree(out, tmp_path / "elsewhere" / "adapter", ignore=shutil.ignore_patterns("checkpoint-*"))
    here = Predictor(adapter=str(out), max_new_tokens=12, device="cpu")
    there = Predictor(adapter=str(copied), max_new_tokens=12, device="cpu")  # the base comes from the adapter
    prompt = "Write a story about Tim and a frog."
    assert here(prompt) == there(prompt)


# --- 7: Ctrl-C and SIGTERM; re-running the same command continues the run -------------------------------

def _train_command(out: Path, *extra: str) -> list[str]:
    """The demo's own YAML (overwrite_output_dir: true, as every example and LLaMA-Factory file sets)."""
    return [sys.executable, "-m", "tunelab", "train", str(DEMO), f"output_dir={out}", f"dataset_dir={DEMO_DATA}",
            "max_samples=64", "per_device_train_batch_size=2", "logging_steps=1", "save_steps=4", "max_steps=32",
            "plot_loss=false", *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _stop_after_checkpoint(out: Path, signum: int) -> tuple[int, str]:
    """Start a run, send ``signum`` once checkpoint-8 is written; (exit code, console output)."""
    process = subprocess.Popen(_train_command(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-8" / "trainer_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "training ended before it was interrupted"
        time.sleep(0.005)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0].decode()
    return process.returncode, output


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    reference = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_train_command(reference), env=ENV, check=True, capture_output=True)
    return reference


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_is_continued_by_the_same_command(tmp_path, reference_run, signum, code, capsys):
    out = tmp_path / "interrupted"
    returncode, output = _stop_after_checkpoint(out, signum)
    assert returncode == code, output
    assert "Traceback" not in output and "run the same command again to continue" in output
    last = checkpoints(out)[-1]
    step = int(last.name.split("-")[1])
    assert 8 <= step < 32 and not (out / "adapter_config.json").exists()
    if signum == signal.SIGTERM:  # the step in progress finished and was saved: nothing done is lost
        assert step == max(_steps(out)), (step, _steps(out))

    from tunelab.training.dry_run import dry_run

    dry_run(load_config(DEMO, _train_command(out)[5:]))  # what the same command would do, said first
    assert f"continuing it from {last.name}" in capsys.readouterr().out
    assert checkpoints(out)[-1] == last and (out / "metrics.jsonl").is_file()  # the dry run changed nothing
    again = subprocess.run(_train_command(out), env=ENV, capture_output=True, text=True)  # the very same command
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {last}" in again.stderr and "unfinished run with these settings" in again.stderr
    assert _steps(out) == list(range(1, 33))  # no gap, no duplicate
    assert _losses(out) == pytest.approx(_losses(reference_run), rel=1e-4)


class _CtrlCAfter:
    """A Ctrl-C right after a step, in-process."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class CtrlC(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return CtrlC()


def test_an_unfinished_run_of_other_settings_is_kept_aside(tmp_path):
    out = tmp_path / "run"
    first = run_sft(_cfg(out, "max_steps=10", "save_steps=2"), callbacks=[_CtrlCAfter(5)])
    assert first.interrupted and not (out / "adapter_config.json").exists()  # stopped: no final model
    saved = {c.name for c in checkpoints(out)}
    other = _cfg(out, "max_steps=3", "save_steps=100", "learning_rate=1e-4", "overwrite_output_dir=true")
    with pytest.raises(ConfigError, match="holds an unfinished run .* other settings"):
        run_sft(_cfg(out, "max_steps=3", "learning_rate=1e-4", "overwrite_output_dir=false"))
    from tunelab.training.dry_run import dry_run

    dry_run(other)
    assert {c.name for c in checkpoints(out)} == saved  # the dry run moved nothing
    assert run_sft(other).global_step == 3
    aside = tmp_path / "run.unfinished-4"
    assert {c.name for c in checkpoints(aside)} == saved and _steps(aside) == [1, 2, 3, 4]
    assert _steps(out) == [1, 2, 3]


# --- --dry-run ---------------------------------------------------------------------------------------

def test_dry_run_checks_everything_and_writes_nothing(tmp_path):
    from tunelab.training.dry_run import dry_run

    out = tmp_path / "run"
    report = dry_run(_cfg(out, "num_train_epochs=2"))
    assert not out.exists()
    assert report["train_samples"] == 48 and report["steps"] == 2 * 48 // 4
    result = run_sft(_cfg(out, "num_train_epochs=2"))
    assert result.global_step == report["steps"]  # the trainer agrees on the number of steps

    from tunelab.models.methods import count_parameters

    assert report["trainable"] == count_parameters(result.model)[0]
    with pytest.raises(DataError):
        dry_run(_cfg(tmp_path / "other", "dataset=no_such_dataset"))


def test_dry_run_of_a_7b_recipe_needs_only_its_config(tmp_path):
    """Qwen2.5-7B's real architecture numbers and a real tokenizer, no weights: the model is built on the
    meta device, so the count and the memory estimate come without downloading or allocating 15 GB."""
    import shutil

    from tunelab.training.dry_run import dry_run

    model = tmp_path / "qwen2.5-7b-config-only"
    shutil.copytree(REPO / "tests" / "fixtures" / "tokenizers" / "minimind", model)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"}))
    cfg = load_config(REPO / "examples" / "qwen2.5_7b_lora_sft.yaml",
                      [f"model_name_or_path={model}", f"output_dir={tmp_path / 'run'}", "max_samples=16",
                       f"dataset_dir={DEMO_DATA}"])
    report = dry_run(cfg)
    assert 7.5e9 < report["parameters"] < 7.7e9  # Qwen2.5-7B has 7.62B parameters
    assert 0 < report["trainable"] < 0.01 * report["parameters"]  # LoRA
    assert 15 < report["memory_gib"] < 80 and not (tmp_path / "run").exists()


def test_loss_plot_reads_across_orders_of_magnitude(tmp_path):
    from tunelab.plots import plot_loss, use_log_scale

    assert use_log_scale([120.0, 3.0, 0.4]) and not use_log_scale([2.1, 1.5, 0.9])
    records = [{"step": s, "loss": 100 / s**2, "learning_rate": 1e-3 * (1 - s / 20)} for s in range(1, 20)]
    records += [{"step": 10, "eval_loss": 1.5, "eval_rewards/accuracies": 0.7}, {"step": 19, "eval_loss": 0.4}]
    records[5]["rewards/accuracies"] = 0.5  # a preference stage's own measure gets its own panel
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path = plot_loss(tmp_path)
    assert path is not None and path.stat().st_size > 10_000
    assert plot_loss(tmp_path / "empty") is None


# --- what the Python API prints: tunelab's own lines, not the libraries' chatter ---------------------------

def test_the_python_api_keeps_library_noise_in_the_log_file(tmp_path):
    script = f"""
from tunelab.config import load_config
from tunelab.stages.sft import run_sft
from tunelab.inference.predictor import Predictor

cfg = load_config({str(DEMO)!r}, ["output_dir={tmp_path / 'run'}", "dataset_dir={DEMO_DATA}", "max_steps=2",
                                   "max_samples=16", "plot_loss=false"])
run_sft(cfg)
print(Predictor(adapter={str(tmp_path / 'run')!r}, max_new_tokens=8)("Write a story about Tim."))
"""
    log = tmp_path / "library.log"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**ENV, "TUNELAB_LOG_FILE": str(log)})
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in ("Failed to load CPU gemm_4bit_forward", "Skipping publisher trust check", "tie_word_embeddings",
                  "FutureWarning", "UserWarning"):
        assert noise not in result.stderr, result.stderr[-3000:]
    assert "saved" in result.stdout and "train" in result.stderr  # tunelab's own summary and progress stay
    assert "tie_word_embeddings" in log.read_text()  # kept, where a bug report can find it


def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    out = tmp_path / "run"
    first = run_sft(_cfg(out, "max_steps=10", "save_steps=100"), callbacks=[_CtrlCAfter(3)])
    assert first.interrupted and not checkpoints(out) and (out / "metrics.jsonl").is_file()
    again = run_sft(_cfg(out, "max_steps=4", "save_steps=100", "overwrite_output_dir=false"))  # not refused
    assert again.global_step == 4 and _steps(out) == [1, 2, 3, 4]
