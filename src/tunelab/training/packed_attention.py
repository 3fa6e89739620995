"""Attention for padding-free rows that attends within each sample only, without a ``[tokens, tokens]`` mask.

A padding-free batch is one row of concatenated samples. With ``sdpa``, transformers keeps the samples apart with a
block-diagonal mask over the whole row, so attention costs the row's length squared: for four samples of 270 tokens,
four times the work of attending within each sample, and a mask that grows with the square of the row. Here the row
is cut at the samples' boundaries (where the position ids restart) and each sample goes through transformers' own
sdpa attention as a plain causal sequence, the fast path of every sdpa kernel. The result is the same attention
(``tests/test_token_loss.py`` checks per-sample loss and gradients).

Batches with padding (evaluation, generation) keep transformers' sdpa mask and attention unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "sdpa_per_sample"


_last_bounds: tuple[torch.Tensor | None, list[int]] = (None, [])  # every layer of one forward reads one tensor


def _sample_bounds(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """Where each sample of one padding-free row starts (and the row's end), or None when it is not such a row;
    found once per forward (the layers share its position ids), not once per layer."""
    global _last_bounds
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] != length:
        return None
    if _last_bounds[0] is not position_ids:
        starts = (position_ids[0, 1:] != position_ids[0, :-1] + 1).nonzero().flatten().add(1).tolist()
        _last_bounds = (position_ids, [0, *starts, length])
    return _last_bounds[1]


def per_sample_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, run per sample of a padding-free row (query and key of one length, no mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = None
    if attention_mask is None and query.shape[2] == key.shape[2]:
        bounds = _sample_bounds(kwargs.get("position_ids"), query.shape[2])
    if bounds is None or len(bounds) == 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, **kwargs)[0] for start, end in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outputs, dim=1), None


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """sdpa's mask where the batch is padded; none for a padding-free row (``per_sample_sdpa`` cuts it)."""
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _full_attention_only(config: Any) -> bool:
    """No sliding-window layers: cutting the row at the samples gives each its full causal attention."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", None) is False


def use_per_sample_attention(model: Any) -> bool:
    """Switch a model on transformers' sdpa (without sliding windows) to ``per_sample_sdpa``; whether it was."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or not _full_attention_only(config):
        return False
    AttentionInterface.register(NAME, per_sample_sdpa)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)
    return True
