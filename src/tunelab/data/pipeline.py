"""From config to tokenized train/eval datasets, with every dropped or truncated sample counted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import TrainConfig
from tunelab.data.masking import Encoded, MaskingError, encode_conversation, encode_text
from tunelab.data.registry import load_dataset_rows, split_rows
from tunelab.errors import ConfigError, DataError


@dataclass
class DataReport:
    """What happened to the records: shown on the console and written to the run directory."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    train_samples: int = 0
    eval_samples: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    trained_tokens: int = 0

    def lines(self) -> list[str]:
        out = [f"dataset {d['name']}: {d['rows']} records ({d['format']} format) from {d['source']}"
               for d in self.datasets]
        out.append(f"train samples: {self.train_samples}, eval samples: {self.eval_samples}, "
                   f"trained tokens: {self.trained_tokens}")
        if self.truncated:
            out.append(f"truncated to cutoff_len: {self.truncated} samples")
        for reason, count in self.dropped.items():
            out.append(f"dropped {count} samples: {reason}")
        return out


def load_rows(cfg: TrainConfig) -> tuple[list[dict], list[dict], DataReport]:
    """Canonical rows of every configured dataset, split into train and eval."""
    if not cfg.dataset:
        raise ConfigError("key 'dataset' is not set; name a dataset from dataset_info.json or a file path")
    report = DataReport()
    rows: list[dict] = []
    for name in cfg.dataset:
        loaded = load_dataset_rows(name, cfg.dataset_dir, cfg.stage, cfg.max_samples)
        report.datasets.append({"name": name, "rows": len(loaded.rows), "format": loaded.format,
                                "source": loaded.source})
        rows += loaded.rows
    train, held_out = split_rows(rows, cfg.val_size, cfg.seed)
    for name in cfg.eval_dataset or []:
        held_out += load_dataset_rows(name, cfg.dataset_dir, cfg.stage, cfg.max_samples).rows
    return train, held_out, report


def encode_row(row: dict, tokenizer: Any, stage: str, policy: str, cutoff_len: int) -> list[Encoded]:
    if stage == "pt":
        return encode_text(tokenizer, row["text"], cutoff_len)
    return [encode_conversation(tokenizer, row["messages"], row.get("tools"), policy, cutoff_len)]


def tokenize_rows(rows: list[dict], tokenizer: Any, cfg: TrainConfig, report: DataReport,
                  split: str) -> list[dict[str, list[int]]]:
    """input_ids/labels per sample; a sample left with no trained token is dropped and counted."""
    samples = []
    for index, row in enumerate(rows):
        try:
            encoded = encode_row(row, tokenizer, cfg.stage, cfg.loss_policy, cfg.cutoff_len)
        except MaskingError as error:
            raise DataError(f"{split} sample {index + 1}: {error}") from None
        for item in encoded:
            if item.truncated:
                report.truncated += 1
            if item.num_trained == 0:
                report.dropped[f"no trained token left after truncation to cutoff_len {cfg.cutoff_len}"] += 1
                continue
            report.trained_tokens += item.num_trained if split == "train" else 0
            samples.append({"input_ids": item.input_ids, "labels": item.labels})
    if not samples and rows:
        raise DataError(f"every {split} sample was dropped; raise cutoff_len (now {cfg.cutoff_len})")
    return samples


def build_datasets(cfg: TrainConfig, tokenizer: Any) -> tuple[Any, Any, DataReport]:
    """Tokenized ``datasets.Dataset`` objects ready for TRL's SFTTrainer (which skips re-tokenizing)."""
    from datasets import Dataset

    train_rows, eval_rows, report = load_rows(cfg)
    train = tokenize_rows(train_rows, tokenizer, cfg, report, "train")
    evaluation = tokenize_rows(eval_rows, tokenizer, cfg, report, "eval")
    report.train_samples, report.eval_samples = len(train), len(evaluation)
    return (Dataset.from_list(train), Dataset.from_list(evaluation) if evaluation else None, report)
