"""tunelab's PPO trainer for language models (TRL >= 1.13 ships none): a ``transformers.Trainer``, so
``accelerate launch`` / ``torchrun``, checkpoints, resume, callbacks and tunelab's run lifecycle work as for
every other stage.

One rollout = ``per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size`` prompts per
process. For each rollout the policy samples one response per prompt (with the run's sampling settings, not the
model's generation defaults, and a seed of its own from the run's seed, the step and the process); the reward
(reward model and/or reward functions, handed in as ``score``) rates each response; the frozen reference (the
base with the adapter disabled under LoRA, else a frozen copy) gives the per-token KL penalty; a value head on
the policy's last hidden state estimates each token's value, and GAE turns penalised rewards and values into
advantages. The rollout is then learned from for ``ppo_epochs`` passes in mini-batches of
``per_device_train_batch_size`` (one optimizer step per ``gradient_accumulation_steps`` mini-batches) with the
clipped policy and value losses of ``ppo_math``. The data loader repeats each rollout's prompts once per
mini-batch of those passes (the sampler trick of TRL's GRPOTrainer), so the Trainer's step counting, schedule
and resume stay exact.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, Trainer

from tunelab.models.generation import generate
from tunelab.training import ppo_math
from tunelab.training.samples import SampleLog

VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "ppo_state.json"
# score(prompts, completions, columns) -> (values per reward function, weighted total per completion)
ScoreFunction = Callable[[list[Any], list[Any], dict[str, list[Any]]], tuple[dict[str, list[float]], list[float]]]


@dataclass
class PPOSettings:
    ppo_epochs: int = 4
    ppo_buffer_size: int = 1
    kl_coef: float = 0.2
    kl_target: float | None = 6.0
    kl_horizon: int = 10000
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    value_loss_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    score_norm: bool = False
    whiten_rewards: bool = False
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class PolicyWithValueHead(nn.Module):
    """The policy (a causal LM, PEFT-wrapped or not) plus a scalar value head on its last hidden state; one
    module, so the optimizer, DDP and gradient clipping see both."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        for module in policy.modules():  # the rollout's log-probs and the update's must come from one function
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        config = policy.config
        hidden = getattr(config, "hidden_size", None) or config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: the first advantages are the rewards
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self) -> Any:
        return self.policy.config

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             output_hidden_states=True, use_cache=False)
        hidden = output.hidden_states[-1].to(self.value_head.weight.dtype)
        return output.logits, self.value_head(hidden).squeeze(-1)


class PromptCollator:
    """Left-padded prompt ids for generation, plus each row's prompt and extra columns for the rewards."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(row["prompt_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            length = len(row["prompt_ids"])
            ids[index, width - length:] = torch.tensor(row["prompt_ids"])
            mask[index, width - length:] = 1
        extras = [{key: value for key, value in row.items() if key != "prompt_ids"} for row in rows]
        return {"input_ids": ids, "attention_mask": mask, "rows": extras}


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as generation counts them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under the sampling distribution (logits / temperature), one value per token."""
    logits = logits.float() / max(temperature, 1e-6)
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sampling_config(settings: PPOSettings, stop_token_ids: list[int], pad_token_id: int | None) -> GenerationConfig:
    """The rollout samples from the distribution whose log-probabilities PPO computes. transformers fills every
    field left None from the model's generation_config.json and then from its global defaults (top_k 50), so each
    logits processor that a model's defaults could switch on (a repetition penalty, top-k) is switched off by value."""
    return GenerationConfig(do_sample=True, num_beams=1, num_return_sequences=1,
                            max_new_tokens=settings.max_completion_length, min_length=0, min_new_tokens=0,
                            temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, min_p=0.0,
                            typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
                            renormalize_logits=False, remove_invalid_values=False, eos_token_id=stop_token_ids,
                            pad_token_id=pad_token_id)


@contextmanager
def seeded_sampling(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator and ``device``'s own for one block, then put both back: a rollout's answers follow from
    its seed alone, and the training's random stream is left where it was."""
    module = torch.get_device_module(device.type) if device.type != "cpu" else None
    cpu_state = torch.get_rng_state()
    device_state = module.get_rng_state() if module is not None else None
    torch.random.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every GPU as well
    if module is not None:
        module.manual_seed(seed)  # the current device only
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if module is not None:
            module.set_rng_state(device_state)


class PPOTrainer(Trainer):
    def __init__(self, *, model: nn.Module, ref_model: nn.Module | None, score: ScoreFunction,
                 settings: PPOSettings, stop_token_ids: list[int], sample_log: SampleLog | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model=PolicyWithValueHead(model), **kwargs)
        self.ref_model = ref_model
        self.score = score
        self.settings = settings
        self.stop_token_ids = stop_token_ids
        self.sample_log = sample_log
        self.kl_controller = ppo_math.AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
        self.score_moments = ppo_math.RunningMoments()
        self._minibatches_per_rollout = self.args.gradient_accumulation_steps * settings.ppo_buffer_size
        self._micro_step = 0
        self._rollout: list[dict[str, torch.Tensor]] | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)  # losses of the steps since the last log
        self._rollout_metrics: dict[str, list[float]] = defaultdict(list)  # rewards, KL of the rollouts since then
        self._last_rollout: dict[str, float] = {}
        if ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    # --- data: each rollout's prompts repeat once per mini-batch of its ppo_epochs passes ---------------

    def get_train_dataloader(self) -> Any:
        return self._get_dataloader(dataset=self.train_dataset, description="Training",
                                    batch_size=self._train_batch_size * self._minibatches_per_rollout,
                                    sampler_fn=self._get_train_sampler, is_training=True)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        from trl.trainer.utils import RepeatSampler

        rollout = self._train_batch_size * self._minibatches_per_rollout * self.accelerator.num_processes
        return RepeatSampler(dataset if dataset is not None else self.train_dataset, mini_repeat_count=1,
                             batch_size=rollout, repeat_count=self.settings.ppo_epochs * self._minibatches_per_rollout,
                             shuffle=True, seed=self.args.seed)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        cycle = self.settings.ppo_epochs * self._minibatches_per_rollout
        if self._rollout is None:  # a start, or a resume that may fall inside a rollout: align with the loader
            self._micro_step = self.state.global_step * self.args.gradient_accumulation_steps
        if self._rollout is None or self._micro_step % cycle == 0:
            self._rollout = self._collect_rollout(super()._prepare_inputs(inputs))
        minibatch = self._rollout[self._micro_step % self._minibatches_per_rollout]
        self._micro_step += 1
        return minibatch

    # --- rollout: generate, score, reference, values, advantages ---------------------------------------

    @torch.no_grad()
    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        policy = self.model.policy
        was_training = policy.training
        policy.eval()
        config = sampling_config(self.settings, self.stop_token_ids, self.processing_class.pad_token_id)
        with seeded_sampling(self._sampling_seed(), prompt_ids.device):
            sampled = generate(policy, prompt_ids, prompt_mask, generation_config=config)
        policy.train(was_training)
        return sampled[:, prompt_ids.shape[1]:]

    def _sampling_seed(self) -> int:
        """This rollout's own seed, from the run's seed, the step the rollout starts at and the process: its answers
        do not depend on what drew random numbers before it (a reward function, a resume), and processes differ."""
        return hash((self.args.seed, self.state.global_step, self.accelerator.process_index)) % 2**63

    def _completion_mask(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first stop token (or everywhere when the answer ran to the limit)."""
        is_stop = torch.isin(completion_ids, torch.tensor(self.stop_token_ids, device=completion_ids.device))
        after_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
        return (~after_stop).long()

    def _sequence_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor],
                          with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probabilities, values) of the completion tokens: position t of the sequence predicts t + 1."""
        if with_values:
            logits, values = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], use_cache=False).logits
            values = None
        # counted from the end: prompt and P-tuning methods put virtual tokens in front of the sequence
        width = batch["completion_ids"].shape[1]
        logits = logits[:, -width - 1:-1]
        logprobs = _token_logprobs(logits, batch["completion_ids"], self.settings.temperature)
        return logprobs, (values[:, -width - 1:-1] if values is not None else None)

    @torch.no_grad()
    def _reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.ref_model is not None:
            return self._sequence_outputs(self.ref_model, batch, with_values=False)[0]
        with self.model.policy.disable_adapter():  # LoRA: the base is the reference, no copy
            return self._sequence_outputs(self.model.policy, batch, with_values=False)[0]

    def _note(self, text: str) -> None:
        """Say in the progress bar what a long rollout is doing (a terminal's bar has a status field)."""
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "note"):
                callback.note(text)

    def _collect_rollout(self, inputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        settings = self.settings
        prompt_ids, prompt_mask, rows = inputs["input_ids"], inputs["attention_mask"], inputs["rows"]
        self._note(f"sampling {len(rows)} answers")
        completion_ids = self._generate(prompt_ids, prompt_mask)
        completion_mask = self._completion_mask(completion_ids)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self.processing_class.pad_token_id)
        attention_mask = torch.cat([prompt_mask, completion_mask], 1)
        batch = {"input_ids": torch.cat([prompt_ids, completion_ids], 1), "attention_mask": attention_mask,
                 "position_ids": _positions(attention_mask), "completion_ids": completion_ids,
                 "completion_mask": completion_mask.float()}

        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)  # padding is pad_token
        prompts = [row["prompt"] for row in rows]
        completions = [[{"role": "assistant", "content": text}] for text in texts]
        columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        self._note(f"scoring {len(rows)} answers")
        per_function, totals = self.score(prompts, completions, columns)
        # an answer that every reward skipped (None) scores 0 here: PPO needs a number for every answer
        scores = torch.tensor(totals, dtype=torch.float32, device=completion_ids.device).nan_to_num(0.0)

        model = self.model
        model.eval()
        with torch.no_grad():
            old_logprobs, old_values = self._sequence_outputs(model, batch)
        model.train()
        ref_logprobs = self._reference_logprobs(batch)
        mask = batch["completion_mask"]
        shaped_scores = scores
        if settings.score_norm:
            self.score_moments.update(self.accelerator.gather(scores))
            shaped_scores = self.score_moments.normalise(scores)
        rewards, kl = ppo_math.kl_penalised_rewards(shaped_scores, old_logprobs, ref_logprobs, mask,
                                                    self.kl_controller.value)
        if settings.whiten_rewards:
            rewards = ppo_math.whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.generalised_advantages(rewards, old_values, mask, settings.gamma, settings.lam)
        advantages = ppo_math.whiten(advantages, mask)

        sequence_kl = self.accelerator.gather(kl.sum(1)).mean().item()
        self._record_rollout(per_function, scores, sequence_kl, mask)
        self.kl_controller.update(sequence_kl, len(prompts) * self.accelerator.num_processes)
        if self.sample_log is not None and self.accelerator.is_main_process:
            first = self.state.global_step + 1  # this rollout trains steps first .. first + its steps - 1
            self.sample_log.record(first, prompts, completions, per_function,
                                   list(getattr(self.score, "weights", None) or []) or None,
                                   steps=settings.ppo_epochs * settings.ppo_buffer_size)

        self._note(f"learning (reward {scores.mean().item():.3f})")
        batch.update(old_logprobs=old_logprobs, old_values=old_values, advantages=advantages, returns=returns)
        return self._split(batch)

    def _split(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        size = self._train_batch_size
        count = self._minibatches_per_rollout
        return [{key: (value[i * size:(i + 1) * size] if torch.is_tensor(value) else value)
                 for key, value in batch.items()} for i in range(count)]

    def _record_rollout(self, per_function: dict[str, list[float]], scores: torch.Tensor, sequence_kl: float,
                        mask: torch.Tensor) -> None:
        gather = self.accelerator.gather
        device = scores.device
        metrics = self._rollout_metrics
        for name, values in per_function.items():
            gathered = gather(torch.tensor(values, dtype=torch.float32, device=device))
            metrics[f"rewards/{name}/mean"].append(gathered.nanmean().item())
            known = gathered[~gathered.isnan()]  # a reward may skip answers (None)
            metrics[f"rewards/{name}/std"].append(known.std().item() if known.numel() > 1 else 0.0)
        totals = gather(scores)
        metrics["reward"].append(totals.mean().item())
        metrics["reward_std"].append(totals.std().item() if totals.numel() > 1 else 0.0)
        metrics["kl"].append(sequence_kl)
        metrics["kl_coef"].append(self.kl_controller.value)
        metrics["completions/mean_length"].append(gather(mask.sum(1)).mean().item())

    # --- the PPO losses --------------------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        settings = self.settings
        logprobs, values = self._sequence_outputs(model, inputs)
        mask = inputs["completion_mask"]
        policy = ppo_math.clipped_policy_loss(logprobs, inputs["old_logprobs"], inputs["advantages"], mask,
                                              settings.clip_range)
        value_loss, value_clip = ppo_math.clipped_value_loss(values, inputs["old_values"], inputs["returns"], mask,
                                                             settings.clip_range_value)
        loss = policy.loss + settings.value_loss_coef * value_loss
        for name, value in (("loss/policy", policy.loss), ("loss/value", value_loss),
                            ("clip_ratio", policy.clip_fraction), ("value_clip_ratio", value_clip),
                            ("policy_approx_kl", policy.approx_kl)):
            self._metrics[name].append(self.accelerator.gather(value.detach()).mean().item())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs carry the mean losses of the steps since the last log and the rewards and KL of the
        rollouts they learned from (a step that reuses a rollout for another PPO epoch repeats its numbers)."""
        if "loss" in logs:
            if self._rollout_metrics:
                self._last_rollout = {key: sum(values) / len(values) for key, values in self._rollout_metrics.items()}
                self._rollout_metrics.clear()
            logs.update({key: sum(values) / len(values) for key, values in self._metrics.items() if values})
            logs.update(self._last_rollout)
            self._metrics.clear()
        super().log(logs, start_time)

    # --- saving and resuming: the policy as usual (adapter or model), the value head and the KL state beside it

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.model.policy.save_pretrained(output_dir)
        save_file({key: value.detach().cpu().contiguous() for key, value in self.model.value_head.state_dict().items()},
                  str(Path(output_dir) / VALUE_HEAD_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            state = {"kl_coef": self.kl_controller.value, "score_moments": self.score_moments.state_dict()}
            (folder / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        from safetensors.torch import load_file

        folder = Path(resume_from_checkpoint)
        policy = self.model.policy
        if (folder / "adapter_config.json").is_file():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(policy, load_file(str(folder / "adapter_model.safetensors")))
        else:
            from transformers.trainer_utils import load_sharded_checkpoint

            if (folder / "model.safetensors").is_file():
                missing, _ = policy.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
                # tied weights (lm_head = embeddings) are saved once; anything else missing is a broken checkpoint
                missing = [key for key in missing if key not in getattr(policy, "_tied_weights_keys", None) or []]
                if missing and not all(key.endswith("lm_head.weight") for key in missing):
                    raise RuntimeError(f"checkpoint {folder} lacks weights: {missing[:5]}")
            else:
                load_sharded_checkpoint(policy, str(folder), strict=False)
        self.model.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
        if (folder / STATE_FILE).is_file():
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            self.kl_controller.value = state["kl_coef"]
            self.score_moments.load_state_dict(state["score_moments"])
