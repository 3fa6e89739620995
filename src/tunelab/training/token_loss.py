"""The causal-LM loss on the labelled positions only: why training on tokens is fast here.

A language model's step at a real vocabulary (32k-152k) is mostly its output layer and the cross-entropy. TRL's
SFTTrainer scores every position on a CPU (padding and prompt included; its compact path is for Triton devices)
and recomputes each vocabulary tile in the backward. Here only the positions whose next token carries loss go
through the output layer, in row chunks small enough that no ``[tokens, vocab]`` logits are ever held, and each
chunk's gradient is computed in the forward (the softmax minus the one-hot target), so the backward is two
matrix products with no recomputation. The loss is the plain one: ``sum over labelled positions of
-log softmax(h W^T + b)[target]`` divided by the number of labelled tokens.

The hidden states come from the model's own forward, with the output layer swapped for a module that hands them
back (``captured_hidden_states``), so every wrapper around the model (PEFT adapters and virtual tokens, DDP,
gradient checkpointing) runs as usual. Models whose logits are rescaled or soft-capped keep TRL's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
LOGITS_BUDGET = 1 << 24  # elements of one chunk's logits: 64 MiB in fp32, two such buffers at a time
# At most this many rows per chunk: at a small vocabulary the budget would take a whole batch at once, holding tens
# of MiB more at the step's peak for no speed (256-row chunks were 10 % faster than one 1,200-row chunk at 6.4k)
MAX_CHUNK_ROWS = 256
# Config attributes that rescale or cap the logits after the output layer: such models keep TRL's path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


@dataclass
class TokenLoss:
    """The summed loss over the labelled positions, with the per-token statistics users watch (no gradient)."""

    loss_sum: torch.Tensor
    num_tokens: int
    entropy_sum: float
    num_correct: int


class LabelledCrossEntropy(torch.autograd.Function):
    """``sum_i -log softmax(hidden_i @ weight.T + bias)[target_i]`` in row chunks, gradients found in the forward.

    Returns (loss sum, entropy sum, number of top-1 hits); only the first carries a gradient."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if want_bias and bias is not None else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h, target = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
            logits = torch.nn.functional.linear(h, weight, bias).float()  # [n, vocab]
            picked = logits.gather(1, target[:, None]).squeeze(1)
            correct += (logits.argmax(1) == target).sum()
            top = logits.amax(1, keepdim=True)
            logits -= top  # shifted in place: every exponent <= 0
            probs = torch.exp(logits)
            total = probs.sum(1)
            log_total = total.log()
            probs /= total[:, None]  # the softmax
            loss += (log_total + top.squeeze(1) - picked).sum()
            entropy += (log_total - torch.einsum("ij,ij->i", probs, logits)).sum()
            # d loss / d logits = softmax - one_hot(target); then the two products of the output layer's backward
            probs[torch.arange(len(target), device=probs.device), target] -= 1.0
            grad = probs.to(h.dtype)
            if grad_hidden is not None:
                torch.mm(grad, weight.to(h.dtype), out=grad_hidden[start:start + chunk_rows])
            if grad_weight is not None:  # accumulated in place: no [vocab, hidden] temporary per chunk
                if grad.dtype == torch.float32:
                    grad_weight.addmm_(grad.t(), h)
                else:
                    grad_weight += (grad.t() @ h).float()
            if grad_bias is not None:
                grad_bias += probs.sum(0)
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight, grad_bias) if t is not None))
        ctx.which = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(entropy, correct)
        return loss, entropy, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        if getattr(ctx, "used", False):  # the gradients were scaled in place and handed over: once only
            raise RuntimeError("LabelledCrossEntropy's backward runs once per forward (retain_graph is not supported)")
        ctx.used = True
        saved = iter(ctx.saved_tensors)
        grads = [next(saved).mul_(grad_loss) if present else None for present in ctx.which]  # ours: scaled in place
        grads = [grad.to(dtype) if grad is not None else None for grad, dtype in zip(grads, ctx.dtypes, strict=True)]
        return grads[0], grads[1], grads[2], None, None


class _HiddenStates(nn.Module):
    """Stands in for the output layer during one forward: keeps its input and returns it instead of logits."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.value = hidden
        return hidden


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside PEFT and distributed wrappers."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_labelled_loss(model: Any) -> bool:
    """A plain output layer whose logits nothing rescales afterwards (else TRL's path keeps the model's maths)."""
    base = causal_lm(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, nn.Module) or getattr(head, "weight", None) is None:
        return False
    text = base.config.get_text_config()
    return all(getattr(text, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS)


@contextlib.contextmanager
def captured_hidden_states(model: Any) -> Iterator[tuple[_HiddenStates, nn.Module]]:
    """Inside: the model's forward returns the last hidden states as its "logits" (nothing is projected);
    yields (the capture, the real output layer)."""
    base = causal_lm(model)
    head = base.get_output_embeddings()
    capture = _HiddenStates()
    base.set_output_embeddings(capture)
    try:
        yield capture, head
    finally:
        base.set_output_embeddings(head)


# Attention implementations that keep the samples of a padding-free row apart (transformers builds a block-diagonal
# mask from the position ids, or the varlen kernels read the sequence boundaries).
_PACKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def supports_padding_free(model: Any, cfg: Any, sequences_per_sample: int = 1) -> bool:
    """Batches as one row of concatenated samples (no padding computed): for transformers' own architectures with an
    attention that isolates the samples, batches of more than one sequence (a preference pair is two), methods
    without virtual tokens (which every packed sample would share), and models without a vision tower (their image
    tokens take positions of their own)."""
    from tunelab.method_registry import method

    base = causal_lm(model)
    return (cfg.per_device_train_batch_size * sequences_per_sample > 1 and not cfg.packing
            and not method(cfg.finetuning_type).is_prompt_learning
            and type(base).__module__.startswith("transformers.models.")
            and getattr(base.config, "vision_config", None) is None
            and getattr(base.config, "_attn_implementation", None) in _PACKED_ATTENTION)


def labelled_token_loss(model: Any, inputs: dict[str, Any]) -> TokenLoss:
    """The summed next-token loss of ``inputs["labels"]`` (unshifted, -100 = no loss), through the model's forward
    and the output layer on the labelled positions only."""
    labels = inputs["labels"]
    forward_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    with captured_hidden_states(model) as (capture, head):
        model(**forward_inputs, use_cache=False)
    hidden = capture.value
    hidden = hidden[:, hidden.shape[1] - labels.shape[1]:]  # prompt tuning's virtual tokens come first
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected, targets = hidden[:, :-1][mask], targets[mask]
    return project(selected, targets, head)


def project(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> TokenLoss:
    """Loss of ``hidden`` rows [N, H] against ``targets`` [N] through ``head``: chunked and fused for a plain linear
    layer, the module itself otherwise (an adapter on the output layer)."""
    if type(head) is nn.Linear or (isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward):
        rows = min(MAX_CHUNK_ROWS, max(1, LOGITS_BUDGET // head.weight.shape[0]))
        loss, entropy, correct = LabelledCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows)
        return TokenLoss(loss, len(targets), float(entropy), int(correct))
    logits = head(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        log_probs = logits.log_softmax(-1)
        entropy = float(-(log_probs.exp() * log_probs).sum())
        correct = int((logits.argmax(-1) == targets).sum())
    return TokenLoss(loss, len(targets), entropy, correct)


def compact_trl_fused_head() -> None:
    """Make TRL's fused LM head (DPO, KTO, GRPO, RLOO and SFT's fallback) score only the labelled positions on
    every device. TRL does so on Triton devices and elsewhere scores every position, prompt and padding included,
    to keep tile shapes fixed for graph compilers (Neuron); eager CPU training has no such compiler. The choice is
    one module-level function of ``trl.trainer.utils``, wrapped here once per process; the per-token results are
    the same (``tests/test_token_loss.py`` checks them and their gradients)."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or getattr(decide, "tunelab_compact", False):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.tunelab_compact = True  # type: ignore[attr-defined]
    compact.original = decide  # type: ignore[attr-defined]
    trl_utils._use_triton = compact
