"""The benchmarks' shared harness (benchmarks/harness.py): its pure functions and the worker round trip."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402


def side(step_seconds: list[float], step_tokens: list[int] | None = None, other_cores: list[float] | None = None,
         cpus: int = 2, threads: int = 1, **changes: object) -> harness.SideResult:
    """A SideResult with only what the aggregation reads filled in."""
    steps = len(step_seconds)
    fields = dict(side="tunelab", tokens_per_second=100.0, cpu_tokens_per_second=90.0, window_tokens=300,
                  window_seconds=3.0, step_seconds=step_seconds, step_cpu_seconds=step_seconds,
                  other_cpu_cores=0.0, step_other_cores=other_cores or [0.0] * steps,
                  step_tokens=step_tokens or [100] * steps, total_tokens=100 * steps, steps=steps,
                  peak_memory_bytes=1 << 20, memory_kind="RSS growth during training", process_max_rss_bytes=1 << 30,
                  final_loss=2.5, losses=[3.0, 2.5], trainable_params=1000, loss_tokens="all tokens",
                  setup_seconds=5.0, settings={"cpus": cpus, "torch_threads": threads, "optim": "adamw_torch"})
    return harness.SideResult(**{**fields, **changes})


def test_window_start_keeps_at_least_one_step_timed() -> None:
    assert harness.window_start(2, 10) == 2
    assert harness.window_start(5, 3) == 2
    assert harness.window_start(2, 0) == 0


def test_run_order_alternates_which_side_goes_first() -> None:
    assert harness.run_order(["trl", "tunelab"], 3) == ["trl", "tunelab", "tunelab", "trl", "trl", "tunelab"]
    assert harness.run_order(["a", "b"], 0) == []


def test_median_ratio_and_their_formatting() -> None:
    runs = [side([1.0], tokens_per_second=t) for t in (300.0, 100.0, 200.0)]
    assert harness.median_of(runs, "tokens_per_second") == 200.0
    assert harness.median_of(runs, lambda r: r.tokens_per_second / 100) == 2.0
    assert harness.ratio(3.0, 2.0) == 1.5
    assert harness.ratio(None, 2.0) is None
    assert harness.ratio(3.0, 0) is None
    assert harness.fmt_ratio(1.5) == "1.50x"
    assert harness.fmt_ratio(None) == "-"


def test_best_of_runs_takes_each_steps_fastest_time() -> None:
    runs = [side([9.0, 1.0, 4.0, 2.0]), side([9.0, 3.0, 1.0, 5.0])]
    assert harness.fastest_step_seconds(runs, start=1) == [1.0, 1.0, 2.0]
    assert harness.fastest_step_seconds(runs[:1], start=1) is None  # one run: nothing to pick from
    different_work = [runs[0], side([9.0, 3.0, 1.0, 5.0], step_tokens=[100, 100, 100, 99])]
    assert harness.fastest_step_seconds(different_work, start=1) is None


def test_undisturbed_allows_the_cores_torch_leaves_free() -> None:
    run = side([1.0, 1.0, 1.0], other_cores=[0.0, 1.05, 1.5], cpus=2, threads=1)
    assert [harness.undisturbed(run, k) for k in range(3)] == [True, True, False]
    busy_machine = side([1.0, 1.0], other_cores=[0.05, 0.5], cpus=2, threads=2)
    assert [harness.undisturbed(busy_machine, k) for k in range(2)] == [True, False]


def test_paired_step_ratio_compares_the_same_step_on_both_sides() -> None:
    tunelab = [side([5.0, 2.0, 2.0, 4.0]), side([5.0, 2.0, 4.0, 4.0])]  # per-step medians 2, 3, 4
    trl = [side([5.0, 1.0, 2.0, 4.0], other_cores=[0.0, 0.0, 0.0, 3.0])]
    ratio, count = harness.paired_step_ratio(tunelab, trl, warmup=1)
    assert (ratio, count) == (1.5, 3)  # step ratios 2.0, 1.5, 1.0
    quiet, quiet_count = harness.paired_step_ratio(tunelab, trl, warmup=1, only_undisturbed=True)
    assert (quiet, quiet_count) == (1.75, 2)  # the last step was disturbed on TRL's only run
    other_batches = [side([5.0, 1.0, 2.0, 4.0], step_tokens=[1, 2, 3, 4])]
    assert harness.paired_step_ratio(tunelab, other_batches, warmup=1) == (None, 0)


def test_differing_settings_lists_what_the_sides_chose_differently() -> None:
    a = side([1.0], settings={"optim": "adamw_torch", "seed": 42, "phases": {"x": 1}})
    b = side([1.0], settings={"optim": "adamw_torch_fused", "seed": 42, "phases": {"x": 2}},
             loss_tokens="assistant replies")
    assert harness.differing_settings(a, b, skip=["phases"]) == {
        "optim": ("adamw_torch", "adamw_torch_fused"), "loss computed on": ("all tokens", "assistant replies")}


def test_table_aligns_columns_to_the_widest_cell() -> None:
    lines = harness.table(["", "tunelab", "TRL"], [["tokens/s", "1,234", "99"], ["ratio", "12.47x"]])
    assert lines == ["          tunelab  TRL",
                     "tokens/s    1,234   99",
                     "ratio      12.47x"]
    fixed = harness.table(["batch", "same"], [["1", "48/48"]], widths=[6], align="><", gap="|")
    assert fixed == [" batch|same", "     1|48/48"]


def test_machine_lines_name_only_the_libraries_described() -> None:
    info = {"cpu": "EPYC, 2 cores", "torch": "2.13", "transformers": "5.24", "trl": "1.16", "peft": "0.21",
            "python": "3.11.7"}
    assert harness.machine_lines(info) == [
        "machine   EPYC, 2 cores", "software  torch 2.13, transformers 5.24, trl 1.16, peft 0.21, python 3.11.7"]
    assert harness.machine_lines({**info, "gpu": "H200"})[0] == "machine   EPYC, 2 cores; GPU H200"


@dataclass
class Spec(harness.SideSpec):
    cutoff_len: int
    profile: str | None = None


def make_spec(tmp_path: Path) -> Spec:
    return Spec(model="/models/m", data="/data/d.json", rows=8, steps=3, batch_size=2, grad_accum=1,
                learning_rate=1e-4, seed=42, warmup=1, device="cpu", bf16=False, gradient_checkpointing=True,
                threads=1, workdir=str(tmp_path), cutoff_len=128)


def test_spec_and_results_round_trip_through_json(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    assert Spec(**json.loads(harness.to_json(spec))) == spec
    result = side([1.0, 2.0], metrics_jsonl_tokens=200)
    assert harness.SideResult(**json.loads(harness.to_json(result))) == result
    assert json.loads(harness.to_json({"path": tmp_path, "text": "convert→jsonl"})) == {
        "path": str(tmp_path), "text": "convert→jsonl"}
    assert "→" in harness.to_json("→")  # readable, not \\u escaped


def test_both_sides_get_the_same_training_arguments(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    shared = spec.training_args(tmp_path / "run")
    assert shared["per_device_train_batch_size"] == 2 and shared["gradient_checkpointing"] is True
    assert shared["save_steps"] == 500  # no checkpoint inside the timed window
    assert spec.trl_args(tmp_path / "run") == {**shared, "include_num_input_tokens_seen": "non_padding",
                                               "use_cpu": True}


WORKER = """
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
spec = json.loads(open(args["--spec"]).read())
if spec.get("fail"):
    print("something went wrong"); sys.exit(3)
open(args["--result"], "w").write(json.dumps({"role": args["--worker"], "doubled": spec["n"] * 2}))
"""


def test_run_worker_passes_the_spec_and_reads_the_result_back(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    assert harness.run_worker(str(script), "trl", {"n": 21}, tmp_path, "trl-0") == {"role": "trl", "doubled": 42}
    assert json.loads((tmp_path / "trl-0.spec.json").read_text()) == {"n": 21}
    with pytest.raises(harness.WorkerFailed, match=r"(?s)exit 3.*something went wrong"):
        harness.run_worker(str(script), "trl", {"fail": True}, tmp_path, "trl-1")


def test_rss_sampler_reports_a_peak_no_lower_than_its_baseline() -> None:
    sampler = harness.RssSampler()
    base = sampler.start()
    peak = sampler.stop()
    assert peak >= base and sampler.stop() == peak
    if Path("/proc/self/statm").is_file():
        assert base > 0 and harness.rss_bytes(anonymous=True) <= harness.rss_bytes()


def test_heap_sampler_sees_an_allocation_that_the_resident_set_may_hide() -> None:
    """malloc's in-use bytes rise by an allocation held during sampling and fall when it is freed, whatever the
    allocator keeps in reserve (which the resident set counts)."""
    import time

    import torch

    if not harness.heap_in_use_bytes():
        pytest.skip("not glibc")
    sampler = harness.RssSampler(interval=0.001)
    sampler.start()
    held = torch.ones(8 << 20)  # 32 MiB, filled: every page touched
    size = held.numel() * held.element_size()
    during = harness.heap_in_use_bytes()
    waited = 0
    while sampler.heap_peak - sampler.heap_base < size and waited < 3000:  # until the thread has sampled it
        time.sleep(0.01)
        waited += 1
    del held
    sampler.stop()
    assert sampler.heap_peak - sampler.heap_base >= size
    assert harness.heap_in_use_bytes() <= during - size + (1 << 20)
