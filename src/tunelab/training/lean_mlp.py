"""SwiGLU MLPs that keep two tensors per token for the backward instead of four: less activation memory, same maths.

transformers writes the MLP of Llama, Qwen, Mistral and most of their kin as ``down(silu(gate(x)) * up(x))``. Autograd
keeps ``gate(x)`` for the SiLU's backward, both ``silu(gate(x))`` and ``up(x)`` for the product's, and the product
itself for the down projection's weight (or its LoRA A): four tensors of the intermediate width (2.7x the hidden
size) per token and layer, the largest share of a small model's activations.

- ``SiluMul`` keeps ``gate(x)`` and ``up(x)`` and recomputes ``silu`` in the backward, with the kernel of autograd's
  own SiLU backward.
- The product is not kept either: a saved-tensor hook stores it as those two factors, and the backward multiplies
  them again (an element-wise product, no matrix product recomputed). Under gradient checkpointing, whose own hooks
  decide what is kept, it steps aside.

The gradients are autograd's (``tests/test_token_loss.py``). Only MLP classes whose forward is exactly that line are
changed, on the model's instances, for training only.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
import types
from typing import Any

import torch
from torch import nn

# The bodies (statements joined by a space) of the forwards that compute down(act(gate(x)) * up(x)) and nothing else.
_STANDARD_BODIES = frozenset((
    "down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) return down_proj",
    "return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))",
))


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, saving only its two inputs."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)  # the kernel autograd's SiLU backward runs
        return grad_gate, grad * nn.functional.silu(gate)


def _recompute_product(packed: Any) -> torch.Tensor:
    """Unpack hook: the down projection's input again from the two factors ``SiluMul`` keeps anyway."""
    if isinstance(packed, torch.Tensor):
        return packed
    gate, up, shape = packed
    return (nn.functional.silu(gate) * up).view(shape)


def ours(pack: Any) -> Any:
    """Mark a pack hook as one of tunelab's recomputations, which nest (see ``others_decide_saving``)."""
    pack.tunelab_recomputes = True
    return pack


def others_decide_saving() -> bool:
    """Whether saved-tensor hooks other than tunelab's recomputations are active (gradient checkpointing's): those
    decide what is kept, and a recomputation steps aside."""
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return top is not None and not getattr(top[0], "tunelab_recomputes", False)


def _product_packer(product: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> Any:
    """Pack hook for the down projection: any tensor that is ``product`` (or a contiguous view of all of it) is kept
    as its factors. Holds no reference to ``product``, or the hook itself would keep it alive."""
    address, numel, dtype = product.data_ptr(), product.numel(), product.dtype
    gate, up = gate.detach(), up.detach()

    def pack(tensor: torch.Tensor) -> Any:
        if (tensor.data_ptr() == address and tensor.numel() == numel and tensor.dtype == dtype
                and tensor.is_contiguous()):
            return gate, up, tensor.shape
        return tensor.detach()

    return ours(pack)


def _lean_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    product = SiluMul.apply(gate, up)
    if not product.requires_grad or others_decide_saving():
        return self.down_proj(product)  # no backward, or someone else's hooks (checkpointing) decide what is kept
    with torch.autograd.graph.saved_tensors_hooks(_product_packer(product, gate, up), _recompute_product):
        return self.down_proj(product)


def forward_lines(cls: type) -> list[str]:
    """``cls.forward``'s source lines, stripped, without blank lines and comments; [] where there is no source. How
    a lean layer recognises the exact computation it replaces."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
    except (OSError, TypeError):
        return []
    return [line.strip() for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


@functools.cache
def _standard_swiglu(cls: type) -> bool:
    """Whether ``cls.forward`` computes ``down(act(gate(x)) * up(x))`` and nothing else (read from its source)."""
    lines = forward_lines(cls)
    return bool(lines) and lines[0].startswith("def forward(self, x)") and " ".join(lines[1:]) in _STANDARD_BODIES


def _is_silu(module: Any) -> bool:
    return isinstance(module, nn.SiLU) or type(module).__name__ == "SiLUActivation"


def use_lean_mlps(model: nn.Module) -> int:
    """Give every standard SwiGLU MLP of ``model`` the lean forward; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if (all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
                and _is_silu(module.act_fn) and _standard_swiglu(type(module))):
            module.forward = types.MethodType(_lean_forward, module)
            changed += 1
    return changed
