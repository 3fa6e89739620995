"""Decoder layers that do not keep their norms' outputs for the backward: the attention and the MLP take them again
from the norms' inputs, which the norms keep anyway. Less activation memory, same gradients.

In Llama, Qwen, Mistral and most of their kin, ``input_layernorm(x)`` feeds the query, key and value projections
and ``post_attention_layernorm(x)`` the gate and up projections. Each of those keeps its input for the backward
(the gradient of its LoRA A, or of its weight in full fine-tuning): two hidden-wide tensors per token and layer,
about 15 % of a LoRA step's activations. The norm itself keeps ``x`` (for its own backward), so a saved-tensor hook
active while the attention or MLP runs stores the norm's output as ``x`` and the norm, and the backward runs the
norm again: a few element-wise passes over one hidden-wide tensor, no matrix product.

Only a norm input that the norm itself keeps is held (float32: the usual RMSNorm keeps its float32 input). Under
gradient checkpointing, whose own hooks decide what is kept, this steps aside (``lean_mlp.others_decide_saving``).

Where the norms' weights train (full fine-tuning), the standard RMSNorm also keeps its normalised input
``x * rsqrt(mean(x**2) + eps)`` for the weight's gradient: one more hidden-wide tensor per norm and token. It keeps
``x`` anyway, so a saved-tensor hook active during the norm stores that tensor as ``x``, and the backward normalises
again with the same operations (``use_lean_norm_weights``).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import nn

from tunelab.training.lean_mlp import forward_lines, others_decide_saving, ours

# (norm, the module its output feeds), as the decoder layers of the Llama family name them
_NORM_FEEDS = (("input_layernorm", "self_attn"), ("post_attention_layernorm", "mlp"))


def _record_norm(norm: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook on the norm: remember its input and output for the module it feeds. A hook, not a new
    ``forward``: transformers re-kernelizes norms on ``model.train()``, which resets their ``forward``."""
    hidden_states = args[0] if args else None
    recomputable = (isinstance(hidden_states, torch.Tensor) and isinstance(output, torch.Tensor)
                    and output.requires_grad and hidden_states.dtype == torch.float32)
    object.__setattr__(norm, "_tunelab_last", (hidden_states, output) if recomputable else None)


class _NormOutput:
    """One norm output the backward takes again: computed at its first unpack, shared by the modules that kept it
    (query, key and value; gate and up), dropped after the last."""

    def __init__(self, norm: nn.Module, norm_input: torch.Tensor) -> None:
        self.norm, self.norm_input = norm, norm_input
        self.pending = 0  # packed and not yet unpacked
        self.value: torch.Tensor | None = None

    def take(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():  # forward, not __call__: the recording hook stays out
                self.value = self.norm.forward(self.norm_input)
        value = self.value
        self.pending -= 1
        if self.pending <= 0:
            self.value = None
        return value


def _recompute_norm_output(packed: Any) -> torch.Tensor:
    """Unpack hook: the norm's output again from its input."""
    if isinstance(packed, torch.Tensor):
        return packed
    norm_output, shape = packed
    return norm_output.take().view(shape)


def _norm_output_packer(output: torch.Tensor, norm_input: torch.Tensor, norm: nn.Module) -> Any:
    """Pack hook: any tensor that is ``output`` (or a contiguous view of all of it) is kept as the norm's input.
    Holds no reference to ``output``, or the hook itself would keep it alive."""
    address, numel, dtype = output.data_ptr(), output.numel(), output.dtype
    norm_output = _NormOutput(norm, norm_input.detach())

    def pack(tensor: torch.Tensor) -> Any:
        if (tensor.data_ptr() == address and tensor.numel() == numel and tensor.dtype == dtype
                and tensor.is_contiguous()):
            norm_output.pending += 1
            return norm_output, tensor.shape
        return tensor.detach()

    return ours(pack)


def _feed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The fed module's own forward; while it runs, its input from the norm is kept as the norm's input."""
    norm = self._tunelab_fed_by
    last = norm.__dict__.get("_tunelab_last")
    object.__setattr__(norm, "_tunelab_last", None)  # hold the norm's tensors no longer than this call
    given = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if last is None or given is not last[1] or others_decide_saving():
        return self._tunelab_inner_forward(*args, **kwargs)
    norm_input, output = last
    with torch.autograd.graph.saved_tensors_hooks(
            _norm_output_packer(output, norm_input, norm), _recompute_norm_output):
        return self._tunelab_inner_forward(*args, **kwargs)


def _is_norm(module: Any) -> bool:
    """RMSNorm (any model's own class) or LayerNorm: stateless, so running one again gives the same output."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def use_lean_norms(model: nn.Module) -> int:
    """Let every decoder layer's attention and MLP keep their norms' inputs instead of the norms' outputs; returns
    how many (norm, fed module) pairs were changed. Attributes are set past ``nn.Module.__setattr__`` so the norm
    is not registered twice (in ``state_dict``); a deep copy rebinds them, and the hooks, to its own modules."""
    changed = 0
    for layer in model.modules():
        for norm_name, fed_name in _NORM_FEEDS:
            norm, fed = getattr(layer, norm_name, None), getattr(layer, fed_name, None)
            if not _is_norm(norm) or not isinstance(fed, nn.Module) or "_tunelab_fed_by" in vars(fed):
                continue
            object.__setattr__(norm, "_tunelab_last", None)
            norm.register_forward_hook(_record_norm)
            object.__setattr__(fed, "_tunelab_inner_forward", fed.forward)
            object.__setattr__(fed, "_tunelab_fed_by", norm)
            fed.forward = types.MethodType(_feed_forward, fed)
            changed += 1
    return changed


# The body (statements joined by a space) of the RMSNorm forward of Llama, Qwen, Mistral and their kin.
_STANDARD_RMS_NORM = (
    "input_dtype = hidden_states.dtype hidden_states = hidden_states.to(torch.float32) "
    "variance = hidden_states.pow(2).mean(-1, keepdim=True) "
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon) "
    "return self.weight * hidden_states.to(input_dtype)")


@functools.cache
def _standard_rms_norm(cls: type) -> bool:
    """Whether ``cls.forward`` is exactly the standard RMSNorm (read from its source)."""
    return " ".join(forward_lines(cls)[1:]) == _STANDARD_RMS_NORM


def _normalise(norm_input: torch.Tensor, eps: float) -> torch.Tensor:
    """The standard RMSNorm's normalised input, by the same operations as its forward (float32 input)."""
    return norm_input * torch.rsqrt(norm_input.pow(2).mean(-1, keepdim=True) + eps)


def _normalised_packer(norm_input: torch.Tensor, eps: float) -> Any:
    """Pack hook inside a standard RMSNorm with a float32 input: the one tensor it keeps of its input's shape other
    than the input itself is the normalised input, kept as the input."""
    address, shape = norm_input.data_ptr(), norm_input.shape
    norm_input = norm_input.detach()

    def pack(tensor: torch.Tensor) -> Any:
        if (tensor.shape == shape and tensor.dtype == torch.float32 and tensor.data_ptr() != address
                and not isinstance(tensor, nn.Parameter)):
            return norm_input, eps
        return tensor.detach()

    return ours(pack)


def _renormalise(packed: Any) -> torch.Tensor:
    """Unpack hook: the normalised input again."""
    if isinstance(packed, torch.Tensor):
        return packed
    return _normalise(*packed)


def _enter_norm(norm: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: while a training norm runs, its normalised input is kept as its input."""
    hidden_states = args[0] if args else None
    if (not torch.is_grad_enabled() or not norm.weight.requires_grad or not isinstance(hidden_states, torch.Tensor)
            or hidden_states.dtype != torch.float32 or others_decide_saving()):
        return
    saving = torch.autograd.graph.saved_tensors_hooks(
        _normalised_packer(hidden_states, norm.variance_epsilon), _renormalise)
    saving.__enter__()
    object.__setattr__(norm, "_tunelab_saving", saving)


def _leave_norm(norm: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook (also when the forward fails): the saving rule ends with the norm."""
    saving = norm.__dict__.pop("_tunelab_saving", None)
    if saving is not None:
        saving.__exit__(None, None, None)


def use_lean_norm_weights(model: nn.Module) -> int:
    """Let every standard RMSNorm of ``model`` keep its input for its weight's gradient, not its normalised input
    (for full fine-tuning; a frozen weight needs neither); returns how many norms. Hooks, not a new ``forward``: a
    ``train()`` re-kernelizes norms, which resets their ``forward``."""
    changed = 0
    for module in model.modules():
        if _standard_rms_norm(type(module)) and "_tunelab_weight_lean" not in vars(module):
            module.register_forward_pre_hook(_enter_norm)
            module.register_forward_hook(_leave_norm, always_call=True)
            object.__setattr__(module, "_tunelab_weight_lean", True)
            changed += 1
    return changed
