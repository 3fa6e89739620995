"""A standalone Hugging Face model from a base plus an adapter (or from a full/freeze run): merged, with its
tokenizer, chat template, generation config and a model card, in safetensors shards; optionally re-saved in
4/8 bits through bitsandbytes.

Every PEFT method whose weights fold into the base merges (LoRA and its variants, AdaLoRA, IA3); prompt-learning
adapters cannot, and say what to do instead. A reward model (stage rm) exports as a sequence-classification
model. When a tied output layer was trained as its own copy (``additional_target: lm_head`` on a model that
ties it to the embeddings), the export unties the two, so the saved model keeps what was trained.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError, shorten
from tunelab.export.settings import ExportSettings
from tunelab.method_registry import method_names, method_of_adapter
from tunelab.models.saving import usage_blocks
from tunelab.models.sources import (
    EMBEDDED_MODEL,
    adapter_setting,
    is_reward_model,
    model_config,
    portable_base_name,
    resolve_model_path,
)

TRAINING_CONFIG = "training_config.yaml"  # the run's config.yaml, kept beside the exported model


def check_mergeable(adapter: str, gguf: bool = False) -> None:
    """Prompt-learning adapters add virtual tokens at run time: there are no weights to fold into the base."""
    peft_type = adapter_setting(adapter, "peft_type")
    made_by = method_of_adapter(peft_type) if peft_type else None
    if made_by is not None and not made_by.can_merge:
        target = "a GGUF file" if gguf else "a standalone model"
        raise TunelabError(f"adapter '{adapter}' is a {made_by.name} ({peft_type}) adapter: its virtual tokens are "
                           f"added at run time and cannot be merged into the base weights, so it cannot become "
                           f"{target}; use it as an adapter (tunelab chat/predict/eval --adapter {adapter}), or train "
                           f"a merging method ({', '.join(method_names(lambda m: m.can_merge))}) to export")
    if peft_type and made_by is None:
        raise TunelabError(f"adapter '{adapter}' has PEFT type {peft_type}, which tunelab cannot merge")


def _untie_trained_output(model: Any) -> None:
    """A tied lm_head trained as its own copy differs from the embeddings after merging: keep both."""
    import torch

    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or not getattr(model.config, "tie_word_embeddings", False):
        return
    if output.weight.data_ptr() == embeddings.weight.data_ptr() or torch.equal(output.weight, embeddings.weight):
        return
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_config is not None and text_config is not model.config:
        text_config.tie_word_embeddings = False
    output.weight = torch.nn.Parameter(output.weight.detach().clone())


def load_merged(settings: ExportSettings, base: str, dtype_name: str) -> tuple[Any, Any]:
    """(tokenizer, model): the base with the adapter merged in, on the export device, in ``dtype_name``."""
    import torch

    from tunelab.inference.loading import LoadOptions, load_for_inference

    adapter = settings.adapter_name_or_path
    head = "score" if is_reward_model(base, adapter) else "causal_lm"
    options = LoadOptions(trust_remote_code=settings.trust_remote_code)
    # merge in fp32 (exact on a CPU), then cast to what was asked
    tokenizer, model, _ = load_for_inference(base, adapter, settings.template, dtype=torch.float32, options=options,
                                             head=head)
    if settings.export_device == "auto" and torch.cuda.is_available():
        model = model.to("cuda")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if adapter is not None:
        try:
            model = model.merge_and_unload()
        except Exception as error:
            raise TunelabError(f"could not merge adapter '{adapter}' into '{base}': {type(error).__name__}: "
                               f"{shorten(str(error))}") from None
    _untie_trained_output(model)
    if tied and not model.config.tie_word_embeddings:
        from tunelab.console import console

        console.print("[bold]export[/bold] the output layer was trained apart from the embeddings it was tied to: "
                      "both are saved (tie_word_embeddings false)")
    dtype = _base_dtype(base) if dtype_name == "auto" else getattr(torch, dtype_name)
    return tokenizer, model.to(dtype=dtype).to("cpu")


def _base_dtype(base: str) -> Any:
    """The dtype the base model's config names (its own precision), float32 when it names none."""
    import torch

    values = model_config(base) or {}
    name = values.get("dtype") or values.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype) \
        else torch.float32


def save_hf(model: Any, tokenizer: Any, folder: Path, settings: ExportSettings, base: str) -> None:
    """safetensors shards (or .bin with export_legacy_format), tokenizer with its chat template, generation config;
    the base's SentencePiece model too (GGUF and slow tokenizers read it; fast tokenizers do not save it)."""
    model.save_pretrained(folder, max_shard_size=f"{int(settings.export_size * 1000)}MB",
                          safe_serialization=not settings.export_legacy_format)
    tokenizer.save_pretrained(folder)
    spm = Path(resolve_model_path(base)) / "tokenizer.model"
    if spm.is_file() and not (folder / spm.name).exists() and len(tokenizer) == _spm_size(spm):
        shutil.copy2(spm, folder / spm.name)


def _spm_size(path: Path) -> int:
    from sentencepiece import SentencePieceProcessor

    return SentencePieceProcessor(model_file=str(path)).vocab_size()


def quantize_saved(folder: Path, bits: int, target: Path, reward: bool = False) -> None:
    """Reload the merged model in 4 or 8 bits (bitsandbytes) and save that, so from_pretrained reloads it
    quantized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float16) if bits == 4
              else BitsAndBytesConfig(load_in_8bit=True))
    try:
        loader = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
        model = loader.from_pretrained(folder, quantization_config=config, dtype=torch.float16)
    except Exception as error:
        raise TunelabError(f"bitsandbytes could not load the merged model in {bits} bits: {type(error).__name__}: "
                           f"{shorten(str(error))}") from None
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(folder).save_pretrained(target)
    for extra in folder.iterdir():
        weights = extra.suffix in (".safetensors", ".bin") or extra.name.endswith(".index.json")  # the 16-bit ones
        if extra.is_file() and not (target / extra.name).exists() and not weights:
            shutil.copy2(extra, target / extra.name)


def recorded_base(model: str) -> str | None:
    """The hub id (or the embedded model's name) a model descends from: a local folder's own model card says
    which (a full fine-tune, an earlier export); a hub id is its own base; a bare local path gives None."""
    name = portable_base_name(model)
    if name == EMBEDDED_MODEL or not Path(model).exists():
        return name
    card = Path(model) / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines()[:20]:
            if line.startswith("base_model:"):
                return line.split(":", 1)[1].strip() or None
    return None


def write_card(folder: Path, title: str, settings: ExportSettings, base: str, what: str,
               usage: tuple[str, str]) -> None:
    """README.md naming the base, the adapter, the data and the training config; the run's config beside it."""
    adapter = settings.adapter_name_or_path
    source_folder = Path(adapter or resolve_model_path(base))
    run_config = next((source_folder / name for name in ("config.yaml", TRAINING_CONFIG)
                       if (source_folder / name).is_file()), source_folder / "config.yaml")
    data, trained = "not recorded", ""
    if run_config.is_file():
        import yaml

        shutil.copy2(run_config, folder / TRAINING_CONFIG)
        values = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
        datasets = values.get("dataset") or []
        data = ", ".join(f"`{name}`" for name in (datasets if isinstance(datasets, list) else [datasets])) or data
        trained = (f"Trained with stage `{values.get('stage')}` and `{values.get('finetuning_type')}` tuning; the "
                   f"training config is `{TRAINING_CONFIG}` beside this file.\n")
    base_name, given = recorded_base(base), portable_base_name(base)
    source = f"`{given}`" + (" (the model embedded in tunelab)" if given == EMBEDDED_MODEL else "")
    if base_name and base_name != given:
        source += f", a fine-tune of `{base_name}`"
    front = f"base_model: {base_name}\n" if base_name else ""
    card = f"""---
{front}library_name: {"gguf" if what.startswith("GGUF") else "transformers"}
tags: [tunelab, export]
---

# {title}

{what} exported by `tunelab export` from {source}{f" with the adapter `{adapter}` merged in" if adapter else ""}.

Data: {data}.
{trained}
## Use

{usage_blocks(*usage)}
"""
    (folder / "README.md").write_text(card, encoding="utf-8")
