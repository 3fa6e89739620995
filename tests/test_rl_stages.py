"""The RL stages (grpo, rloo, ppo) on the embedded model: with a reward it can learn (does the story use the
requested name?), a short seeded CPU run raises the mean reward; PPO also learns from a reward model trained
by stage rm in the same test; runs resume; what is saved reloads; mistakes are refused before any model loads.

The prompts are the project's own (``examples/data/demo_rl_prompts.json``); the reward is the user function
``examples/rewards/story_rewards.py:uses_requested_name``, named as users name their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.runs import read_metrics
from tunelab.stage_registry import all_stages

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "examples" / "data"
FIXTURES = REPO / "tests" / "fixtures"
NAME_REWARD = f"{REPO / 'examples' / 'rewards' / 'story_rewards.py'}:uses_requested_name"

pytestmark = pytest.mark.slow


def _cfg(stage: str, out: Path, *overrides: str):
    base = [f"stage={stage}", f"output_dir={out}", f"dataset_dir={DEMO_DATA}", "dataset=demo_rl_prompts",
            "template=default", "additional_target=lm_head", "logging_steps=1", "save_steps=1000", "plot_loss=false",
            "lr_scheduler_type=constant", "report_to=none", "max_completion_length=24", f"reward_funcs={NAME_REWARD}"]
    if stage != "ppo":
        base += ["learning_rate=5e-3", "num_generations=8", "per_device_train_batch_size=32"]
    else:
        # PPO takes an Adam step per mini-batch: at 5e-3 one step moved a token's log-probability by ~0.8 (policy
        # approx_kl 0.2-0.7, a fifth to a half of the tokens clipped) and a reward that ignores the answer drove
        # the KL to 22-25 nats in 30 steps; at 1e-3 a step moves it by ~0.2 and the KL stays near ppo_target
        base += ["learning_rate=1e-3", "per_device_train_batch_size=16", "ppo_epochs=2", "ppo_kl_coef=0.05"]
    if any(o.startswith("finetuning_type=") and o != "finetuning_type=lora" for o in overrides):
        base.remove("additional_target=lm_head")  # a LoRA key
    return load_config(None, [*base, *overrides])


def _train(cfg, callbacks=None):
    return all_stages()[cfg.stage].run()(cfg, callbacks=callbacks)


def _rewards(out: Path, key: str = "reward") -> list[float]:
    return [r[key] for r in read_metrics(out) if key in r]


def _assert_reward_rises(out: Path, key: str = "reward", by: float = 0.15) -> None:
    rewards = _rewards(out, key)
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + by, f"{key}: first steps {rewards[:5]}, last steps {rewards[-5:]}"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A seeded run repeats itself only at one thread count: how many threads split a sum decides its last bits,
    and one flipped sampled token sends the rest of the run elsewhere. One thread, whatever the machine has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- learning ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_group_rl_raises_the_reward_and_logs_what_it_does(tmp_path, stage, capsys):
    out = tmp_path / stage
    result = _train(_cfg(stage, out, "max_steps=25"))
    assert result.global_step == 25
    assert f"completions   {out / 'completions.jsonl'}" in capsys.readouterr().out  # the summary names it
    _assert_reward_rises(out)
    last = [r for r in read_metrics(out) if "reward" in r][-1]
    # each reward function's mean and spread, the KL to the reference and the answers' length are logged
    for key in ("rewards/uses_requested_name/mean", "rewards/uses_requested_name/std", "reward_std", "kl",
                "completions/mean_length"):
        assert key in last, key
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "completion", "rewards", "total"} <= set(samples[0])
    assert samples[0]["rewards"]["uses_requested_name"] in (0.0, 1.0)
    assert len({json.dumps(s["prompt"]) for s in samples if s["step"] == 1}) > 1  # spread over the groups
    assert (out / "adapter_model.safetensors").is_file()


def test_full_fine_tuning_grpo_scores_a_reference_copy(tmp_path):
    """Full fine-tuning has no adapter to switch off: the KL term's reference is tunelab's frozen copy of the base,
    with the same per-token log-probability head TRL gives its own reference. After one step the policy has moved
    away from it."""
    out = tmp_path / "full"
    result = _train(_cfg("grpo", out, "finetuning_type=full", "max_steps=2", "per_device_train_batch_size=8",
                         "num_generations=4", "learning_rate=1e-3", "beta=0.04"))
    assert result.global_step == 2
    kl = [r["kl"] for r in read_metrics(out) if "kl" in r]
    assert kl[0] == 0.0 and kl[-1] > 0.0


def test_ppo_with_a_reward_function_raises_the_reward_and_reloads(tmp_path, one_thread):
    from peft import PeftModel
    from safetensors.torch import load_file

    from tunelab.models.loading import load_model, load_tokenizer

    out = tmp_path / "ppo"
    # Seeded (answers, data order, adapter init) on one thread. 64 answers a rollout: the mean reward of the first
    # and of the last steps is then known to about +-0.04 (with 16 to +-0.08, as much as the old margin). Over
    # seeds 0-14 and 42 it rose by 0.33 to 0.48 (KL at most 5.3); with learning_rate=1e-9, PPO learning nothing,
    # by -0.06 to +0.06 (seeds 0-6 and 42).
    result = _train(_cfg("ppo", out, "max_steps=20", "per_device_train_batch_size=64", "seed=42"))
    _assert_reward_rises(out, by=0.2)
    kl = _rewards(out, "kl")  # near ppo_target (6 nats); it random-walked to 30 when each step moved too far
    assert max(kl) < 12, kl
    last = [r for r in read_metrics(out) if "loss/value" in r][-1]
    for key in ("loss/policy", "loss/value", "clip_ratio", "kl", "kl_coef", "reward_std",
                "rewards/uses_requested_name/mean"):
        assert key in last, key
    # The saved adapter is the policy: plain peft on the base gives the trained model's logits.
    tokenizer = load_tokenizer(str(out))
    ids = tokenizer("Human: Write a story about Tim and a frog.\nAssistant:", return_tensors="pt").input_ids
    reloaded = PeftModel.from_pretrained(load_model("stories260K", tokenizer), str(out)).eval()
    trained = result.model.policy.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained(ids).logits, atol=1e-5)
    value_head = load_file(str(out / "value_head.safetensors"))
    assert torch.equal(value_head["weight"], result.model.value_head.weight.detach().cpu())


def test_ppo_learns_from_a_reward_model_trained_by_stage_rm(tmp_path, one_thread):
    from tunelab.inference.reward import RewardScorer

    rm_out = tmp_path / "rm"
    _train(load_config(None, ["stage=rm", f"output_dir={rm_out}", f"dataset_dir={DEMO_DATA}",
                              "dataset=demo_preferences", "template=default", "per_device_train_batch_size=8",
                              "learning_rate=5e-3", "max_steps=40", "logging_steps=5", "save_steps=1000",
                              "plot_loss=false", "report_to=none"]))
    out = tmp_path / "ppo_rm"
    # This reward model's scores spread by ~0.9 over one rollout's answers, and PPO raises their mean slowly: 64
    # answers a rollout, all of them logged, and 40 steps keep the comparisons below from being a coin toss. With 40
    # steps, seeds 0-7 and 42 raised the logged mean by 0.04-0.32 and the rescored one (first three rollouts against
    # the last three) by 0.04-0.29. With 20 steps two seeds in eight did not, once the reward model had moved by
    # float noise alone (trained padding-free: the same loss curve to 1e-4).
    _train(_cfg("ppo", out, "max_steps=40", "per_device_train_batch_size=64", "num_completions_to_log=64", "seed=42",
                "reward_funcs=[]", f"reward_model={rm_out}", "ppo_score_norm=true"))
    _assert_reward_rises(out, "rewards/reward_model/mean", by=0.0)
    # the policy's answers, scored by the reward model on their own, score higher after PPO
    scorer = RewardScorer(adapter=str(rm_out))
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    early = [s for s in samples if s["step"] <= 5]  # the first three rollouts, then the last three
    late = [s for s in samples if s["step"] >= 35]
    score = lambda rows: sum(scorer.score_batch([r["prompt"] for r in rows],  # noqa: E731
                                                [r["completion"] for r in rows])) / len(rows)
    assert score(late) > score(early)


# --- resume -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, extra", [("grpo", []), ("ppo", ["ppo_epochs=2"]),
                                          ("ppo", ["finetuning_type=full", "ppo_epochs=3", "learning_rate=1e-3"])],
                         ids=["grpo", "ppo-lora", "ppo-full"])
def test_rl_runs_resume_from_their_last_checkpoint(tmp_path, stage, extra, stop_after, monkeypatch):
    out = tmp_path / stage
    overrides = ["max_steps=8", "save_steps=4", *extra]
    first = _train(_cfg(stage, out, *overrides), callbacks=[stop_after(6)])
    assert first.global_step == 6 and (out / "checkpoint-4").is_dir()
    if stage == "ppo":  # the value head and the KL controller come back from checkpoint-4
        from tunelab.training.ppo import PPOTrainer

        restored = {}
        original = PPOTrainer._load_from_checkpoint

        def spy(self, checkpoint, model=None):
            original(self, checkpoint, model)
            restored.update(value_head=self.model.value_head.weight.detach().clone(),
                            kl_coef=self.kl_controller.value)

        monkeypatch.setattr(PPOTrainer, "_load_from_checkpoint", spy)
    resumed = _train(_cfg(stage, out, *overrides, "resume_from_checkpoint=last", "overwrite_output_dir=false"))
    assert resumed.global_step == 8 and (out / "checkpoint-8").is_dir()
    if stage == "ppo":
        from safetensors.torch import load_file

        saved = load_file(str(out / "checkpoint-4" / "value_head.safetensors"))
        assert torch.equal(restored["value_head"], saved["weight"]) and saved["weight"].abs().sum() > 0
        assert restored["kl_coef"] == json.loads((out / "checkpoint-4" / "ppo_state.json").read_text())["kl_coef"]
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 9))


# --- mistakes, before any model loads ---------------------------------------------------------------

def test_ppo_dry_run_counts_the_steps_the_run_makes(tmp_path):
    """Whole rollouts only: 40 prompts in rollouts of 16 are 2 rollouts of ppo_epochs 2 steps (not ceil(80 / 16))."""
    from tunelab.training.dry_run import dry_run

    cfg = _cfg("ppo", tmp_path / "ppo", "max_steps=-1", "num_train_epochs=1", "max_samples=40")
    planned = dry_run(cfg)["steps"]
    assert planned == 4
    assert _train(cfg).global_step == planned


def test_rl_mistakes_are_refused_before_anything_loads(tmp_path, monkeypatch):
    import tunelab.training.lifecycle as lifecycle

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(lifecycle, "load_trainable_model", no_model)
    with pytest.raises(ConfigError, match="did you mean 'correctness'"):
        _cfg("grpo", tmp_path, "reward_funcs=corectness")
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        _train(_cfg("grpo", tmp_path / "g", "per_device_train_batch_size=12"))
    with pytest.raises(ConfigError, match="wrong for prompt-learning adapters"):
        _train(_cfg("grpo", tmp_path / "g", "finetuning_type=prefix", "pre_seq_len=4"))
    with pytest.raises(ConfigError, match="not checked for virtual tokens"):
        _train(_cfg("ppo", tmp_path / "p", "finetuning_type=prompt"))
    with pytest.raises(ConfigError, match="does not evaluate"):
        _train(_cfg("ppo", tmp_path / "p", "eval_strategy=steps", "eval_steps=5", "val_size=8"))
    with pytest.raises(ConfigError, match="`ppo_epochs` applies to stage ppo; this run is `grpo`"):
        _cfg("grpo", tmp_path, "ppo_epochs=2")
    assert not any(tmp_path.iterdir())


def test_llamafactory_ppo_yaml_runs_with_the_paths_changed(tmp_path, tiny_model):
    model_dir = tiny_model("llama")
    data = [f"dataset_dir={FIXTURES / 'data' / 'llamafactory'}", "max_samples=16", "cutoff_len=512"]
    for name in ("reward", "ppo"):
        text = (REPO / "tests" / "data" / f"llamafactory_llama3_lora_{name}.yaml").read_text()
        text = text.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(model_dir))
        (tmp_path / f"{name}.yaml").write_text(text.replace("saves/llama3-8b/lora/reward", str(tmp_path / "rm")))
    _train(load_config(tmp_path / "reward.yaml", [*data, f"output_dir={tmp_path / 'rm'}", "max_steps=2"]))
    cfg = load_config(tmp_path / "ppo.yaml", [*data, f"output_dir={tmp_path / 'ppo'}", "max_steps=2",
                                              "max_new_tokens=8"])
    assert (cfg.max_completion_length, cfg.top_p, cfg.template) == (8, 0.9, "llama3")
    result = _train(cfg)
    assert result.global_step == 2 and (tmp_path / "ppo" / "value_head.safetensors").is_file()
    assert "rewards/reward_model/mean" in [r for r in read_metrics(tmp_path / "ppo") if "reward" in r][-1]


# --- RL prompts --------------------------------------------------------------------------------------

def test_rl_prompts_carry_the_system_prompt_and_the_columns_the_rewards_read(tmp_path):
    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT
    from tunelab.training.lifecycle import prepare_data

    cfg = load_config(None, ["stage=grpo", f"dataset_dir={DEMO_DATA}", "dataset=gsm8k_train", "max_samples=40",
                             "reward_funcs=correctness,xmlcount", f"system_prompt={R1_SYSTEM_PROMPT}",
                             "cutoff_len=200", "num_generations=2", f"output_dir={tmp_path}"])
    _, train, _, report = prepare_data(cfg)  # the run's own path: the stage's system_prompt reaches the data layer
    first = train[0]  # GSM8K's first record: Natalia's clips, "#### 72"
    assert first["prompt"][0] == {"role": "system", "content": R1_SYSTEM_PROMPT}
    assert first["prompt"][1]["content"].startswith("Natalia sold clips") and first["answer"] == "72"
    # prompts longer than cutoff_len cannot be cut without losing the question: dropped and counted
    dropped = report.skipped.as_dict()["prompt longer than cutoff_len 200"]["count"]
    assert dropped > 0 and len(train) + dropped == 40
    # a LIMO set (MATH500): the problem is the prompt, the gold answer and solution stay for `accuracy`
    cfg = load_config(None, ["stage=grpo", f"dataset_dir={DEMO_DATA}", "dataset=math500", "max_samples=3",
                             "reward_funcs=accuracy", "num_generations=2", f"output_dir={tmp_path}"])
    _, train, _, _ = prepare_data(cfg)
    assert {"answer", "solution"} <= set(train.column_names) and train[0]["prompt"][-1]["role"] == "user"
