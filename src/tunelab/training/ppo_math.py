"""The arithmetic of PPO for language models, as small pure functions that tests check by hand.

Shapes: ``(batch, tokens)`` over the completion tokens; ``mask`` is 1 on a completion's real tokens and 0 on
the padding after its end. A response is one episode: the reward model's (or reward functions') score
arrives at its last token, and every token pays a KL penalty for moving away from the reference model
(Ziegler et al. 2019; Ouyang et al. 2022). Advantages come from generalised advantage estimation
(Schulman et al. 2016) over a learned value per token, and the policy and value losses are clipped as in
PPO (Schulman et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (Bessel's correction: a rollout is a sample)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    squares = ((values - mean) ** 2 * mask).sum()
    return squares / (count - 1) if count > 1 else squares * 0


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale the masked entries to unit variance (and zero mean with ``shift_mean``); padding stays 0.
    Rewards are whitened without shifting the mean, so a good batch stays good."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalised_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards, per-token KL): every token gets ``-kl_coef * (log p - log p_ref)`` and the last real
    token of each response also gets its score. The KL estimate is the sampled log-ratio (k1), whose mean over
    the policy's own samples is KL(policy || reference)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def generalised_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                           lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by GAE: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
    with V after a response's last token taken as 0 (the episode ends there); returns = A + V."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    following = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(following)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        following = (delta + gamma * lam * following) * mask[:, t]
        advantages[:, t] = following
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor  # share of tokens where the clipped term was the one used
    approx_kl: torch.Tensor  # mean of 0.5 (log ratio)^2: how far this update moved from the rollout policy


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float) -> PolicyLoss:
    """PPO's clipped surrogate, as a loss to minimise: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e))."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return PolicyLoss(masked_mean(torch.maximum(unclipped, clipped), mask),
                      masked_mean((clipped > unclipped).float(), mask),
                      masked_mean(0.5 * log_ratio**2, mask))


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip fraction): 0.5 * mean of max((V - R)^2, (V_clipped - R)^2), with V_clipped kept within
    ``clip_range`` of the rollout's value, so one batch cannot drag the value head far."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    return (0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask),
            masked_mean((clipped_error > unclipped_error).float(), mask))


class AdaptiveKLController:
    """The KL coefficient steered toward a target KL (Ziegler et al. 2019): raised when the policy drifts
    further than ``target`` nats from the reference, lowered when it stays closer; ``target`` None keeps it fixed."""

    def __init__(self, init_coef: float, target: float | None, horizon: int = 10000) -> None:
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, batch_size: int) -> None:
        if self.target is None or not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * batch_size / self.horizon


class RunningMoments:
    """Running mean and standard deviation of every score seen so far (Chan et al.'s parallel update), for
    ``ppo_score_norm``: scores are centred and scaled by what the run has seen, not by one small batch."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double()
        batch_count = values.numel()
        if batch_count == 0:
            return
        batch_mean = values.mean().item()
        batch_var = values.var(unbiased=False).item()
        total = self.count + batch_count
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        # population variance of everything seen, with Bessel's correction once there is more than one value
        return math.sqrt(self.var * self.count / (self.count - 1)) if self.count > 1 else 1.0

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / max(self.std, 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
