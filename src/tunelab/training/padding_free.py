"""Padded batches run padding-free: the DPO, KTO, GRPO and RLOO trainers' forwards through TRL's fused LM head, and
the reward trainer's through the score head.

TRL's DPO trainer pads chosen and rejected answers to one length and runs them as one batch (its padding-free
option is disabled in this version); KTO pads its completions alike; GRPO and RLOO pad their prompts on the left and
their completions on the right. Wrapped here, the fused forward (``add_fused_lm_head``, which returns per-token
log-probabilities) takes such a batch, runs its tokens as one row with position ids restarting at each sample
(transformers' attention, or ``packed_attention.per_sample_sdpa``, keeps the samples apart), scores each position
against its own sample's next token, and puts the per-token results back in the padded layout the trainer reads.
No padding is computed; the results are the same (``tests/test_token_loss.py``).

The reward trainer pads chosen and rejected sequences (right) into one batch, and the sequence-classification model
scores each row at its last token that is not padding. ``pack_score_forward`` runs the tokens as one row alike and
applies the score head at those same tokens (``tests/test_padding_free_rm.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def pack_fused_forward(model: Any) -> None:
    """Wrap the fused forward TRL installed on ``model``. Calls without ``fused_lm_head`` (generation, evaluation
    with logits) or with anything but ids, mask and labels as tensors (images, embeddings) go through unchanged."""
    fused = model.forward

    @functools.wraps(fused)  # the model's own signature, which generate checks its keyword arguments against
    def forward(*args: Any, fused_lm_head: bool = False, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        unchanged = (not fused_lm_head or args or input_ids is None or attention_mask is None or labels is None
                     or input_ids.shape[0] < 2 or any(isinstance(value, torch.Tensor) for value in kwargs.values()))
        if unchanged:
            return fused(*args, fused_lm_head=fused_lm_head, input_ids=input_ids, attention_mask=attention_mask,
                         labels=labels, **kwargs)
        keep = attention_mask.bool()
        next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)  # what each position predicts
        outputs = fused(input_ids=input_ids[keep][None], position_ids=(attention_mask.long().cumsum(1) - 1)[keep][None],
                        shift_labels=next_labels[keep][None], fused_lm_head=True, **kwargs)
        for name, value in list(outputs.items()):
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == int(keep.sum()):
                outputs[name] = value.new_zeros(keep.shape).masked_scatter(keep, value[0])[:, :-1]
        return outputs

    model.forward = forward


def pack_trainer_forwards(trainer: Any) -> None:
    """Padding-free fused forwards, with per-sample attention, for a TRL trainer's policy and reference model (TRL
    put its fused head on each)."""
    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.token_loss import causal_lm

    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            use_per_sample_attention(causal_lm(model))
            pack_fused_forward(causal_lm(model))


_HEAD_ONLY = ("labels", "return_dict")  # PEFT passes these (as None) to the model; its body takes neither


def pack_score_forward(model: Any) -> None:
    """Wrap a transformers sequence-classification model's forward (a reward model's). Calls with anything but ids
    and mask as tensors, a single row, or a row whose scored token is padding go through unchanged."""
    plain = model.forward
    pad = model.config.get_text_config().pad_token_id

    @functools.wraps(plain)
    def forward(*args: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        unchanged = (args or input_ids is None or attention_mask is None or pad is None or input_ids.shape[0] < 2
                     or any(isinstance(value, torch.Tensor) for value in kwargs.values()))
        if not unchanged:
            keep = attention_mask.bool()
            columns = torch.arange(input_ids.shape[1], device=input_ids.device)
            scored = (columns * (input_ids != pad)).argmax(-1)  # transformers' rule: the last token not padding
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            unchanged = not bool(keep[rows, scored].all())
        if unchanged:
            return plain(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        packed_index = keep.flatten().cumsum(0).view_as(keep) - 1  # each kept token's place in the one row
        body = getattr(model, model.base_model_prefix)
        passed = {key: value for key, value in kwargs.items() if value is not None and key not in _HEAD_ONLY}
        hidden = body(input_ids=input_ids[keep][None], position_ids=columns.expand_as(keep)[keep][None],
                      **passed).last_hidden_state  # the positions the padded batch has (transformers counts columns)
        return SequenceClassifierOutputWithPast(logits=model.score(hidden[0, packed_index[rows, scored]]))

    model.forward = forward


def pack_reward_forward(trainer: Any) -> None:
    """A padding-free score forward, with per-sample attention, for TRL's reward trainer's model."""
    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.token_loss import causal_lm

    model = causal_lm(trainer.model)
    use_per_sample_attention(model)
    pack_score_forward(model)
