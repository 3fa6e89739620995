"""One way to load a model for inference (chat, predict, score, later eval and serve): base model plus
optional adapter, the tokenizer the adapter was saved with, and the same load options everywhere."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError, shorten
from tunelab.models.sources import (
    EMBEDDED_MODEL,
    adapter_base,
    check_adapter_source,
    check_model_source,
    default_template,
    is_reward_model,
    model_config,
    resolve_model_path,
)
from tunelab.quiet import quiet_libraries


@dataclass(frozen=True)
class LoadOptions:
    """What reaches every model and tokenizer load (the train config's keys of the same names)."""

    trust_remote_code: bool = False
    revision: str = "main"
    flash_attn: str = "auto"
    cache_dir: str | None = None

    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": self.trust_remote_code, "revision": self.revision, "cache_dir": self.cache_dir}


def base_model_for(model: str | None, adapter: str | None) -> str:
    """The model to load: the one given, else the base an adapter records, else the embedded model."""
    if model is not None:
        return model
    return (adapter_base(adapter) if adapter else None) or EMBEDDED_MODEL


def check_inference_sources(model: str | None, adapter: str | None, use: str | None = None) -> str:
    """Adapter and model paths checked (no heavy import); returns the model to load. ``use``: "generate" refuses
    a reward model (it has a score head, no language-model head), "score" refuses anything else."""
    if adapter is not None:
        check_adapter_source(adapter, "--adapter")
    flag, given = ("--adapter", adapter) if adapter is not None else ("--model", model)
    model = base_model_for(model, adapter)
    check_model_source(model, "--model")
    reward = is_reward_model(model, adapter)
    if use == "generate" and reward:
        raise TunelabError(f"{flag} '{given}' is a reward model (stage rm): it scores answers and cannot generate "
                           f"them; score with `tunelab score {flag} {shlex.quote(str(given))} --prompt ... --response "
                           "...` (or a "
                           "preference DATASET), or give a model or adapter trained by sft, dpo, ppo, ...")
    # what is not at hand (a hub id) may be a reward model: only a local folder can be told apart
    known = (Path(adapter).expanduser() / "adapter_config.json").is_file() if adapter is not None \
        else model_config(model) is not None
    if use == "score" and known and not reward:
        raise TunelabError(f"{flag} '{given or model}' is not a reward model (no score head from stage rm); "
                           "train one with stage: rm, or generate with `tunelab chat` / `tunelab predict`")
    return model


def load_for_inference(model: str | None, adapter: str | None, template: str | None, *, dtype: Any,
                       options: LoadOptions = LoadOptions(), head: str = "causal_lm") -> tuple[Any, Any, str]:
    """(tokenizer, model, base model name). The adapter's saved tokenizer carries its chat template."""
    quiet_libraries()  # the Python API (Predictor, RewardScorer) as quiet as the commands
    adapter = str(Path(adapter).expanduser()) if adapter is not None else None
    from tunelab.models.loading import load_model, load_tokenizer

    # a reward model cannot generate; a score head on a plain model is allowed here (an untrained baseline), and
    # refused only by `tunelab score`, where it is a mistake
    model = check_inference_sources(model, adapter, use="generate" if head == "causal_lm" else None)
    source = model
    if adapter is not None and template is None and (Path(adapter) / "tokenizer_config.json").is_file():
        source = adapter
    tokenizer = load_tokenizer(source, template if source == adapter else default_template(model, template),
                               **options.tokenizer_kwargs())
    if not getattr(tokenizer, "chat_template", None):
        where = f"'{resolve_model_path(model)}'" + (f" or the adapter '{adapter}'" if adapter else "")
        raise TunelabError(f"no chat template in {where} (a base model?); pass one explicitly, e.g. --template default")
    loaded = load_model(model, tokenizer, dtype=dtype, head=head, flash_attn=options.flash_attn,
                        **options.tokenizer_kwargs())
    if adapter is not None:
        from peft import PeftModel

        try:
            loaded = PeftModel.from_pretrained(loaded, adapter)
        except Exception as error:  # wrong base model, bad config: one message
            raise TunelabError(f"could not load adapter '{adapter}' on '{model}': {type(error).__name__}: "
                               f"{shorten(str(error))}") from None
    return tokenizer, loaded, model
