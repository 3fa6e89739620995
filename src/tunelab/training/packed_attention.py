"""Attention for padding-free rows that attends within each sample only, without a ``[tokens, tokens]`` mask.

A padding-free batch is one row of concatenated samples. With ``sdpa``, transformers keeps the samples apart with a
block-diagonal mask over the whole row, so attention costs the row's length squared: for four samples of 270 tokens,
four times the work of attending within each sample, and a mask that grows with the square of the row. Here the row
is cut at the samples' boundaries (where the position ids restart) and each sample goes through transformers' own
sdpa attention as a plain causal sequence, the fast path of every sdpa kernel. The result is the same attention
(``tests/test_token_loss.py`` checks per-sample loss and gradients).

Batches with padding (evaluation, generation) keep transformers' sdpa mask and attention unchanged.

Joining the samples' outputs makes a copy, which the output projection then keeps for its backward (its LoRA A, or
its weight). Where sdpa's kernel writes its output as ``[batch, tokens, heads, dim]`` (flash and memory-efficient
kernels) and keeps it, that is a second copy: one hidden-wide tensor per token and layer. There the output
projection keeps the samples' outputs instead (a saved-tensor hook), and the backward joins them again.
"""

from __future__ import annotations

import types
from typing import Any, NamedTuple

import torch

from tunelab.training.lean_mlp import others_decide_saving, ours

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

    global _joined
    _joined = None  # whatever an earlier call left (a forward that failed) is never this layer's
    bounds = None
    if attention_mask is None and query.shape[2] == key.shape[2]:
        bounds = _sample_bounds(kwargs.get("position_ids"), query.shape[2])
    if bounds is None or len(bounds) == 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, **kwargs)[0] for start, end in zip(bounds, bounds[1:], strict=False)]
    joined = torch.cat(outputs, dim=1)
    if _keeps_pieces(module, joined, outputs):
        _joined = _Joined(joined.data_ptr(), joined.numel(), joined.dtype, [piece.detach() for piece in outputs])
    return joined, None


class _Joined(NamedTuple):
    """The joined output of the attention running now, for its output projection."""

    address: int
    numel: int
    dtype: torch.dtype
    pieces: list[torch.Tensor]  # the samples' outputs, which sdpa keeps for its backward


_joined: _Joined | None = None


def _keeps_pieces(module: torch.nn.Module, joined: torch.Tensor, pieces: list[torch.Tensor]) -> bool:
    """Whether the output projection should keep the samples' outputs instead of ``joined``: there is a backward,
    the projection takes them (``o_proj``, wrapped), and each piece is a view of what sdpa returned, which its
    kernel keeps (flash and memory-efficient kernels write ``[batch, tokens, heads, dim]``). Where a piece is a
    copy (the math kernel's layout), keeping the pieces would save nothing."""
    projection = getattr(module, "o_proj", None)
    return (joined.requires_grad and isinstance(projection, torch.nn.Module)
            and "_tunelab_inner_forward" in vars(projection) and all(piece._base is not None for piece in pieces))


def _pieces_packer(joined: _Joined) -> Any:
    """Pack hook: the joined output (or a contiguous view of all of it) is kept as the samples' outputs. Holds no
    reference to the joined output, or the hook itself would keep it alive."""

    def pack(tensor: torch.Tensor) -> Any:
        if (tensor.data_ptr() == joined.address and tensor.numel() == joined.numel and tensor.dtype == joined.dtype
                and tensor.is_contiguous()):
            return joined.pieces, tensor.shape
        return tensor.detach()

    return ours(pack)


def _join_pieces(packed: Any) -> torch.Tensor:
    """Unpack hook: the joined output again from the samples' outputs."""
    if isinstance(packed, torch.Tensor):
        return packed
    pieces, shape = packed
    return torch.cat(pieces, dim=1).view(shape)


def _output_projection_forward(self: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """The output projection's own forward; given the joined output, it keeps the samples' outputs instead."""
    global _joined
    joined, _joined = _joined, None  # held no longer than this call
    if (joined is None or not isinstance(hidden_states, torch.Tensor) or hidden_states.data_ptr() != joined.address
            or others_decide_saving()):
        return self._tunelab_inner_forward(hidden_states, *args, **kwargs)
    with torch.autograd.graph.saved_tensors_hooks(_pieces_packer(joined), _join_pieces):
        return self._tunelab_inner_forward(hidden_states, *args, **kwargs)


def _keep_pieces_in_output_projections(model: torch.nn.Module) -> None:
    """Wrap each attention's ``o_proj`` (after PEFT, whose LoRA layer replaces it). Attributes are set past
    ``nn.Module.__setattr__``, as in ``lean_norms``: nothing is registered, and a deep copy rebinds them."""
    for module in list(model.modules()):
        projection = getattr(module, "o_proj", None)
        if isinstance(projection, torch.nn.Module) and "_tunelab_inner_forward" not in vars(projection):
            object.__setattr__(projection, "_tunelab_inner_forward", projection.forward)
            projection.forward = types.MethodType(_output_projection_forward, projection)


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
    """Switch a model on transformers' sdpa (without sliding windows) to ``per_sample_sdpa``, its output projections
    keeping the samples' outputs; whether it was."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or not _full_attention_only(config):
        return False
    AttentionInterface.register(NAME, per_sample_sdpa)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)
    _keep_pieces_in_output_projections(model)
    return True
