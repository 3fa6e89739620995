"""Continuous batching for the transformers engine: requests join a running batch at the next step and leave it
as soon as they end, so a new request never waits for a whole batch and a finished row costs nothing.

One KV cache (transformers' ``DynamicCache``) holds every row, left-padded to a common length. A joining group
is prefilled on its own, then its cache is padded on the left and stacked under the running rows' (positions
are already applied to the keys, so padding does not move them); a row that ends is cut out of the cache, and
columns that only padding still uses are dropped. Each step is one forward pass over the last token of every
row, with per-row decoding from ``decoding.py``.

Used where the model's cache is a plain ``DynamicCache`` (most decoder-only models); sliding-window or other
caches, and prompt-learning adapters, run as whole batches through ``generate`` instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunelab.inference.engines.decoding import Row, choose_tokens


def supports_continuous(model: Any) -> bool:
    """A model whose default cache is made of plain dynamic layers only (checked once, when loaded)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a model that builds no standard cache (remote code)
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return F.pad(tensor, pad)


class DecodeBatch:
    """Rows decoding together over one cache; ``join`` adds rows, ``step`` advances every row by one token."""

    def __init__(self, model: Any, device: torch.device, pad_id: int) -> None:
        import inspect

        self.model, self.device, self.pad_id = model, device, pad_id
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # the prefill needs the last position's logits only, not prompt x vocabulary of them
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # batch x cached length: 1 where a row has a real token
        self.last: torch.Tensor | None = None  # each row's newest token, the next step's input

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        output = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, **self.extra)
        return output.logits[:, -1, :]

    def join(self, rows: list[Row]) -> None:
        """Prefill ``rows`` (their first token is chosen here) and stack them under the running ones."""
        from transformers import DynamicCache

        width = max(len(row.prompt_ids) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            ids[index, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[index, width - len(row.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        first = choose_tokens(rows, self._forward(ids, mask, cache))
        if self.cache is None:
            self.cache, self.mask, self.last, self.rows = cache, mask, first, list(rows)
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            for running, joining in zip(self.cache.layers, cache.layers, strict=True):
                running.keys = torch.cat([_pad_left(running.keys, length, 2), _pad_left(joining.keys, length, 2)])
                running.values = torch.cat([_pad_left(running.values, length, 2),
                                            _pad_left(joining.values, length, 2)])
            self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
            self.last = torch.cat([self.last, first])
            self.rows += rows
        self._take(first, rows)

    def step(self) -> None:
        """One token for every running row."""
        assert self.mask is not None and self.last is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        tokens = choose_tokens(self.rows, self._forward(self.last.unsqueeze(1), self.mask, self.cache))
        self.last = tokens
        self._take(tokens, self.rows)

    def _take(self, tokens: torch.Tensor, rows: list[Row]) -> None:
        """Hand each row its token; rows that ended leave the batch (and the cache)."""
        for row, token in zip(rows, tokens.tolist(), strict=True):
            row.add(int(token))
        keep = [index for index, row in enumerate(self.rows) if not row.done]
        for row in self.rows:
            if row.done:
                row.finish()
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.last = None
            return
        assert self.mask is not None and self.last is not None
        selected = torch.tensor(keep, device=self.mask.device)
        self.mask, self.last = self.mask[selected], self.last[selected]
        used = int(self.mask.any(0).nonzero()[0])  # columns before this hold only padding now
        self.mask = self.mask[:, used:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[selected, :, used:]
            layer.values = layer.values[selected, :, used:]
