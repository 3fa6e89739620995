"""Training under a real launcher: torchrun with two CPU processes (gloo), the same path as multi-GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_data_parallel(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "ddp"
    command = [torchrun, "--nproc_per_node", "2", "-m", "tunelab", "train", str(REPO / "examples/demo_lora_sft.yaml"),
               f"output_dir={out}", f"dataset_dir={REPO / 'examples/data'}", "max_steps=3", "logging_steps=1",
               "per_device_train_batch_size=4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "config.yaml").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # written once, by rank 0
    # 2 processes x 4 samples per step: an epoch of 216 samples advances 8/216 per step
    assert records[-1]["epoch"] == pytest.approx(3 * 8 / 216, abs=1e-3)


@pytest.mark.slow
def test_torchrun_two_processes_run_tunelabs_ppo(tmp_path):
    """tunelab's own PPO trainer under a launcher: each process samples its own prompts (the sampler shards whole
    rollouts), rewards and KL are gathered across processes, rank 0 writes."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    out = tmp_path / "ppo"
    command = [torchrun, "--nproc_per_node", "2", "-m", "tunelab", "train", str(REPO / "examples/stories_ppo.yaml"),
               f"output_dir={out}", f"dataset_dir={REPO / 'examples/data'}", "max_steps=4", "logging_steps=1",
               "per_device_train_batch_size=4",
               f"reward_funcs={REPO / 'examples/rewards/story_rewards.py'}:uses_requested_name"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "value_head.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all("reward" in r and "kl" in r for r in records if "loss" in r)
    # a rollout is 2 processes x 4 prompts, learned from in ppo_epochs = 2 steps: 4 steps are 2 rollouts, 16 of
    # the 216 prompts
    assert records[-1]["epoch"] == pytest.approx(2 * 8 / 216, abs=1e-3)
