"""TRL's SFTTrainer with tunelab's loss path: the output layer and the cross-entropy on the labelled positions only
(``token_loss.py``), with the same loss value and the same logged entropy and token accuracy (now over the
labelled positions only, which is what they describe). Setups that change the loss itself (DFT, label smoothing,
a custom loss function, MoE auxiliary losses, rescaled logits) keep TRL's own computation."""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer

from tunelab.training.token_loss import causal_lm, labelled_token_loss, supports_labelled_loss


class LabelledLossSFTTrainer(SFTTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labelled_loss = (supports_labelled_loss(self.model) and self.args.loss_type == "nll"
                              and self.compute_loss_func is None and self.label_smoother is None
                              and not self.aux_loss_enabled and not self._head_outside_forward_breaks())

    def _head_outside_forward_breaks(self) -> bool:
        """The output layer runs after the model's forward here. Sharded weights (FSDP, DeepSpeed) are whole only
        inside the forward, and DDP refuses a trainable parameter whose gradient arrives after its forward (an
        output layer trained beside an adapter, or full fine-tuning): those keep TRL's path."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return True
        head = causal_lm(self.model).get_output_embeddings()
        return self.accelerator.num_processes > 1 and any(p.requires_grad for p in head.parameters())

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not self.labelled_loss:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        result = labelled_token_loss(model, inputs)
        count = result.num_tokens if num_items_in_batch is None else num_items_in_batch
        loss = result.loss_sum / torch.as_tensor(count, device=result.loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages the gradients across ranks
        self._log_token_metrics(mode, result, inputs)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """A padding-free row has no attention mask and no padding: every position is a real token (Trainer would
        count the tokens unequal to the pad token, which miscounts when the pad token is also the end marker)."""
        if "attention_mask" in inputs or "position_ids" not in inputs or \
                self.args.include_num_input_tokens_seen == "no":
            return super()._track_num_input_tokens(inputs)
        seen = torch.as_tensor(inputs["position_ids"].numel(), device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(seen).sum().item())

    def _log_token_metrics(self, mode: str, result: Any, inputs: dict[str, Any]) -> None:
        """TRL's entropy, mean_token_accuracy and num_tokens, over the labelled positions."""
        device = self.accelerator.device
        gather = self.accelerator.gather_for_metrics
        counts = torch.tensor([[result.num_tokens, result.entropy_sum, result.num_correct]], device=device,
                              dtype=torch.float64)
        valid, entropy, correct = gather(counts).sum(0).tolist()  # one collective for the three
        self._metrics[mode]["entropy"].append(entropy / valid if valid else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(correct / valid if valid else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                seen = inputs["attention_mask"].sum()
            else:  # padding-free: one row of concatenated samples
                seen = torch.tensor(inputs["position_ids"].size(1), device=device)
            self._total_train_tokens += int(gather(seen.to(device)).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
