"""Scores from a reward model trained by stage ``rm``: one float per (prompt, response).

The conversation is rendered and cut exactly as in training (``data/encoders.py``), so a score here is the
score the model learned; the RL stages use the same class as a reward.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.encoders import encode_pair, scored_sequence
from tunelab.inference.loading import LoadOptions, load_for_inference


def _messages(text: str | list[dict], role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


class RewardScorer:
    """A reward model (a full ``rm`` output folder, or a base model plus an ``rm`` adapter)."""

    def __init__(self, model: str | None = None, adapter: str | None = None, template: str | None = None, *,
                 device: str | None = None, batch_size: int = 8, options: LoadOptions | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.tokenizer, self.model, self.model_name = load_for_inference(
            model, adapter, template, dtype=torch.float32, options=options or LoadOptions(), head="score")
        self.model.to(self.device).eval()

    def _sequence(self, prompt: str | list[dict], response: str | list[dict]) -> list[int]:
        row = {"prompt": _messages(prompt, "user"), "chosen": _messages(response, "assistant"),
               "rejected": _messages(response, "assistant")}
        return scored_sequence(encode_pair(row, self.tokenizer)[0])

    def score_batch(self, prompts: list[Any], responses: list[Any]) -> list[float]:
        """One score per (prompt, response); prompts and responses are text or message lists."""
        scores: list[float] = []
        sequences = [self._sequence(p, r) for p, r in zip(prompts, responses, strict=True)]
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start:start + self.batch_size]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(batch):  # right padding: the head reads the last real token
                ids[row, :len(sequence)] = torch.tensor(sequence)
                mask[row, :len(sequence)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores += logits[:, 0].float().cpu().tolist()
        return scores

    def __call__(self, prompt: str | list[dict], response: str | list[dict]) -> float:
        return self.score_batch([prompt], [response])[0]
