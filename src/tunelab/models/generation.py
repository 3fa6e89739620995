"""Generation from any trained model, prompt-learning adapters included.

PEFT 0.21's ``generate`` for prompt learning under transformers 5 drifts from what the trained model's forward
pass gives: for prefix tuning (P-Tuning v2) it hands the prefix to the model as ``past_key_values`` while
generation passes its own empty ``cache``, which the model reads instead; for P-tuning and prompt tuning the
tokens go wrong after the first few. So the virtual tokens go to the base model's own ``generate`` the way they
are defined: a prefix as a pre-filled KV cache, soft prompts as input embeddings in front of the prompt's, with
the attention mask extended over them. The tokens then equal a greedy decode by full forward passes, with the
KV cache. Every other model generates through its own ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch


def _prompt_learning_type(model: Any) -> str | None:
    config = getattr(model, "active_peft_config", None)
    return str(getattr(config, "peft_type", "")).rsplit(".", 1)[-1] if getattr(config, "is_prompt_learning",
                                                                                False) else None


def generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             **kwargs: Any) -> torch.Tensor:
    """``model.generate``: the prompt followed by the new tokens, for every kind of model."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    kind = _prompt_learning_type(model)
    if kind is None:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    batch = input_ids.shape[0]
    virtual = model.active_peft_config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1)
    kwargs.pop("use_cache", None)
    base = model.get_base_model()
    if kind == "PREFIX_TUNING":
        return base.generate(input_ids=input_ids, attention_mask=mask, past_key_values=model.get_prompt(batch),
                             use_cache=True, **kwargs)
    embeddings = base.get_input_embeddings()(input_ids)
    prompts = model.get_prompt(batch_size=batch).to(embeddings.dtype)
    new_tokens = base.generate(inputs_embeds=torch.cat([prompts, embeddings], dim=1), attention_mask=mask,
                               use_cache=True, **kwargs)  # from embeddings alone, generate returns only new tokens
    return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)
