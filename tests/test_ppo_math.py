"""PPO's arithmetic against values computed by hand (the working is in each test's comments), and the rollout's
sampling: from the distribution whose log-probabilities PPO computes, reproducible from a seed."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.training.ppo_math import (
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    generalised_advantages,
    kl_penalised_rewards,
    whiten,
)


def _close(actual: torch.Tensor, expected: list, tol: float = 1e-6) -> None:
    assert torch.allclose(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=tol), actual.tolist()


def test_gae_on_a_short_trajectory_and_one_that_ends_early():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second answer ended after two tokens
    advantages, returns = generalised_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 1: d2 = 1 + 0 - 0.7 = 0.3 -> A2 = 0.3; d1 = 0 + 0.7 - 0.6 = 0.1 -> A1 = 0.1 + 0.5 * 0.3 = 0.25;
    #        d0 = 0 + 0.6 - 0.5 = 0.1 -> A0 = 0.1 + 0.5 * 0.25 = 0.225
    # row 2: the padded reward 5 and value 9 do not count: d1 = 1 + 0 - 0.4 = 0.6 -> A1 = 0.6;
    #        d0 = 0.2 + 0.4 - 0.1 = 0.5 -> A0 = 0.5 + 0.5 * 0.6 = 0.8
    _close(advantages, [[0.225, 0.25, 0.3], [0.8, 0.6, 0.0]])
    _close(returns, [[0.725, 0.85, 1.0], [0.9, 1.0, 0.0]])


def test_gae_discounts_with_gamma():
    rewards, values, mask = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.ones(1, 2)
    advantages, _ = generalised_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    _close(advantages, [[0.9, 1.0]])  # A0 = 0 + 0.9 * 0 - 0 + 0.9 * 1.0 * 1.0


def test_clipped_policy_objective():
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, -1, -1 and clip 0.2:
    #   +1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped);  +1, r=0.5: max(-0.5, -0.8) = -0.5
    #   -1, r=1.5: max(1.5, 1.2) = 1.5;               -1, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    result = clipped_policy_loss(new, old, advantages, torch.ones(1, 4), clip_range=0.2)
    assert result.loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert result.clip_fraction.item() == pytest.approx(0.5)
    assert result.approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_clipped_policy_objective_ignores_padding():
    new, old = torch.tensor([[0.0, 3.0]]), torch.zeros(1, 2)
    result = clipped_policy_loss(new, old, torch.tensor([[2.0, 7.0]]), torch.tensor([[1.0, 0.0]]), clip_range=0.2)
    assert result.loss.item() == pytest.approx(-2.0) and result.clip_fraction.item() == 0.0


def test_clipped_value_loss():
    # clipped values: 0.5 + clamp(0.5, -0.2, 0.2) = 0.7 and 0.5 + clamp(-0.5) = 0.3
    # errors: unclipped (1-2)^2 = 1, (0-0)^2 = 0; clipped (0.7-2)^2 = 1.69, 0.3^2 = 0.09 -> 0.5 * mean(1.69, 0.09)
    loss, clip_fraction = clipped_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]),
                                             torch.tensor([[2.0, 0.0]]), torch.ones(1, 2), clip_range=0.2)
    assert loss.item() == pytest.approx(0.445) and clip_fraction.item() == 1.0


def test_kl_penalty_per_token_and_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-1.5, -1.0, -4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, 2.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl = log p - log p_ref = [0.5, -1, 0] (padding 0); reward = -0.1 * kl, plus the score 2 on the last real token
    _close(kl, [[0.5, -1.0, 0.0], [0.5, -1.0, 0.0]])
    _close(rewards, [[-0.05, 0.1, 2.0], [-0.05, 2.1, 0.0]])


def test_whitening():
    # mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    scale = math.sqrt(5 / 3)
    _close(whiten(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)),
           [[-1.5 / scale, -0.5 / scale, 0.5 / scale, 1.5 / scale]], tol=1e-5)
    # padding is left out and stays 0: mean 1.5, variance 0.5; without the shift the mean is kept
    masked = torch.tensor([[1.0, 1.0, 0.0]])
    _close(whiten(torch.tensor([[1.0, 2.0, 100.0]]), masked), [[-0.70710677, 0.70710677, 0.0]], tol=1e-5)
    _close(whiten(torch.tensor([[1.0, 2.0, 100.0]]), masked, shift_mean=False),
           [[1.5 - 0.70710677, 1.5 + 0.70710677, 0.0]], tol=1e-5)


def test_adaptive_kl_coefficient_moves_toward_the_target():
    above = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    above.update(12.0, batch_size=100)  # error clipped to +0.2: 0.2 * (1 + 0.2 * 100 / 10000)
    assert above.value == pytest.approx(0.2004)
    below = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    below.update(3.0, batch_size=100)  # error -0.5 clipped to -0.2
    assert below.value == pytest.approx(0.1996)
    fixed = AdaptiveKLController(0.2, target=None)
    fixed.update(50.0, batch_size=100)
    assert fixed.value == 0.2


def test_running_moments_over_batches():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.mean == pytest.approx(3.0) and moments.std == pytest.approx(math.sqrt(2.5))
    _close(moments.normalise(torch.tensor([3.0, 5.0])), [0.0, 2.0 / math.sqrt(2.5)], tol=1e-6)
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.mean, restored.std) == pytest.approx((moments.mean, moments.std))


def test_rollouts_sample_from_the_distribution_ppo_scores_whatever_the_model_defaults_say():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.training.ppo import PPOSettings, sampling_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    # defaults a checkpoint's generation_config.json may carry; transformers' own would add top_k=50
    model.generation_config.update(top_k=5, top_p=0.5, repetition_penalty=1.5, no_repeat_ngram_size=1,
                                   min_new_tokens=3, typical_p=0.5, min_p=0.3)
    config = sampling_config(PPOSettings(temperature=0.7, max_completion_length=4), stop_token_ids=[2],
                             pad_token_id=0)
    config.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
    out = model.generate(input_ids=torch.tensor([[1, 5, 9, 5]]), generation_config=config)
    assert len(out.scores) == 4
    for scores, logits in zip(out.scores, out.logits, strict=True):  # only the temperature touches the logits
        torch.testing.assert_close(scores, logits / 0.7)


def test_seeded_sampling_repeats_its_draws_and_leaves_the_global_stream_alone():
    from tunelab.training.ppo import seeded_sampling

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded_sampling(7, torch.device("cpu")):
        first = torch.multinomial(torch.ones(50), 10)
    with seeded_sampling(7, torch.device("cpu")):
        again = torch.multinomial(torch.ones(50), 10)
    with seeded_sampling(8, torch.device("cpu")):
        other = torch.multinomial(torch.ones(50), 10)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.rand(3), expected_next)  # as if the seeded blocks had not drawn
