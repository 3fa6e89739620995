"""The labelled-positions loss (training/token_loss.py) is the plain causal-LM loss: same value and gradients on the
same batch, full and LoRA, masked and padding-free; it never holds [tokens, vocab] logits; and a padding-free row
keeps its samples apart in attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.training.token_loss import LabelledCrossEntropy, labelled_token_loss

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALPACA = FIXTURES / "data" / "llamafactory" / "alpaca_en_demo.json"


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max().clamp(min=1e-12))


def test_chunked_cross_entropy_equals_the_plain_one_with_its_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(101, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(101, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 101, (37,))
    loss, entropy, correct = LabelledCrossEntropy.apply(hidden, weight, bias, targets, 5)  # 8 chunks, last short
    (2.0 * loss).backward()
    mine = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    logits = hidden @ weight.T + bias
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (2.0 * plain).backward()
    assert _close(loss.double(), plain.detach(), 1e-6)
    for got, want in zip(mine, (hidden.grad, weight.grad, bias.grad), strict=True):
        assert _close(got, want, 1e-6)
    probs = logits.detach().softmax(-1)
    assert _close(entropy.double(), -(probs * probs.log()).sum(), 1e-6)
    assert int(correct) == int((logits.argmax(-1) == targets).sum())


def _model(arch: str = "llama", attention: str = "sdpa", vocab: int = 6400):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    config = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=arch == "qwen2")
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).float()


def _alpaca_samples(count: int = 6) -> list[dict[str, list[int]]]:
    """Real alpaca rows through tunelab's encoder: assistant-only labels from the minimind tokenizer's template."""
    from tunelab.config import DataSettings
    from tunelab.data.pipeline import DataReport, tokenize_rows
    from tunelab.data.registry import load_dataset_rows
    from tunelab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(FIXTURES / "tokenizers" / "minimind"), "chatml")
    rows = load_dataset_rows(str(ALPACA), ".", "sft", max_samples=count).rows
    return tokenize_rows(rows, tokenizer, DataSettings(cutoff_len=160), "sft", DataReport(), "train")


def _padded(samples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.long)
    labels = torch.full((len(samples), width), -100)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(sample["input_ids"]), torch.tensor(
            sample["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _flat(samples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """TRL's padding-free layout: one row, position ids restarting per sample, no label on a sample's first token."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(samples)
    return {key: batch[key] for key in ("input_ids", "labels", "position_ids")}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _plain_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (full logits, shifted cross-entropy over the labelled tokens)."""
    return model(**batch, use_cache=False).loss


def _ours(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    result = labelled_token_loss(model, batch)
    return result.loss_sum / result.num_tokens


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_loss_and_gradients_equal_the_models_own_masked_and_padding_free(method, arch):
    model = _model(arch)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    samples = _alpaca_samples()
    assert any(label == -100 for label in samples[0]["labels"]) and any(label != -100 for label in samples[0]["labels"])
    padded = _padded(samples)
    reference = _plain_loss(model, padded)
    reference.backward()
    want = _grads(model)
    model.zero_grad()
    for batch in (padded, _flat(samples)):  # the same samples, padded and padding-free
        loss = _ours(model, batch)
        loss.backward()
        got = _grads(model)
        model.zero_grad()
        assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
        assert got.keys() == want.keys() and want
        for name in want:
            assert _close(got[name], want[name], 1e-4), name


def test_prompt_tuning_virtual_tokens_are_skipped():
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(_model(), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    batch = _padded(_alpaca_samples(3))
    assert abs(_ours(model, batch).item() - _plain_loss(model, batch).item()) <= 1e-5 * _plain_loss(
        model, batch).item()


@pytest.mark.parametrize("limit", ["LOGITS_BUDGET", "MAX_CHUNK_ROWS"])
def test_no_tokens_by_vocabulary_tensor_is_allocated(monkeypatch, limit):
    """Only chunks of at most min(LOGITS_BUDGET // vocab, MAX_CHUNK_ROWS) rows ever have the vocabulary as their last
    dimension."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tunelab.training import token_loss

    vocab = 6400
    monkeypatch.setattr(token_loss, limit, vocab * 8 if limit == "LOGITS_BUDGET" else 8)  # chunks of 8 rows
    model = _model(vocab=vocab)
    batch = _padded(_alpaca_samples())
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled > 100
    widest: list[int] = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view:  # a transposed weight is no allocation
                return out
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.shape[-1] == vocab:
                    widest.append(tensor.numel() // vocab)
            return out

    with Shapes():
        _ours(model, batch).backward()
    assert widest and max(widest) <= 8, max(widest)
    widest.clear()
    with Shapes():
        _plain_loss(model, batch)
    assert max(widest) >= labelled  # the plain path does hold them: the check can see it


@pytest.mark.parametrize("attention", ["sdpa", "eager", "sdpa_per_sample"])
def test_a_padding_free_row_keeps_its_samples_apart(attention):
    """Each sample's loss and gradients in a packed row equal those of the sample alone."""
    from tunelab.training.packed_attention import use_per_sample_attention

    model = _model(attention="sdpa" if attention == "sdpa_per_sample" else attention)
    if attention == "sdpa_per_sample":
        assert use_per_sample_attention(model)
    samples = _alpaca_samples(3)
    alone, grads_alone = [], []
    for sample in samples:
        loss = labelled_token_loss(model, _padded([sample])).loss_sum
        loss.backward()
        alone.append(loss.item())
        grads_alone.append(_grads(model))
        model.zero_grad()
    packed = _flat(samples)
    total = labelled_token_loss(model, packed).loss_sum
    total.backward()
    assert abs(total.item() - sum(alone)) <= 1e-5 * sum(alone)
    summed = {name: sum(g[name] for g in grads_alone) for name in grads_alone[0]}
    for name, grad in _grads(model).items():
        assert _close(grad, summed[name], 1e-4), name
    # the check can fail: the same row read as one sequence (no restart of positions) gives another loss
    crossed = labelled_token_loss(model, {"input_ids": packed["input_ids"], "labels": packed["labels"]}).loss_sum
    assert abs(crossed.item() - sum(alone)) > 1e-3
    # a padded batch of the samples (evaluation, generation) still gives each sample's own loss
    padded = labelled_token_loss(model, _padded(samples)).loss_sum
    assert abs(padded.item() - sum(alone)) <= 1e-5 * sum(alone)


def test_per_sample_attention_is_not_used_where_it_would_change_attention():
    """Sliding-window layers (attention limited within a sample too) and other implementations keep theirs."""
    from tunelab.training.packed_attention import NAME, use_per_sample_attention

    model = _model()
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert not use_per_sample_attention(model)
    assert not use_per_sample_attention(_model(attention="eager"))
    model = _model()
    assert use_per_sample_attention(model) and model.config._attn_implementation == NAME


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_per_sample_attention_keeps_no_copy_of_its_joined_output(method, arch, monkeypatch):
    """The output projection keeps the samples' outputs, which sdpa's flash kernel keeps anyway, not the copy that
    joins them: that copy's storage is freed when the forward ends. The loss and gradients are those without this
    (the same kernels), exactly. As in training, per-sample attention comes after PEFT."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from tunelab.training import packed_attention
    from tunelab.training.token_loss import causal_lm

    batch = _flat(_alpaca_samples(4))
    wrap = packed_attention._keep_pieces_in_output_projections
    results = []
    for lean in (False, True):
        monkeypatch.setattr(packed_attention, "_keep_pieces_in_output_projections", wrap if lean else lambda _: None)
        model = _model(arch)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        assert packed_attention.use_per_sample_attention(causal_lm(model))
        joined: list[StorageWeakRef] = []
        for name, module in model.named_modules():
            if name.endswith("o_proj"):
                module.register_forward_pre_hook(
                    lambda _module, args, kept=joined: kept.append(StorageWeakRef(args[0].untyped_storage())))
        loss = _ours(model, batch)
        assert [output.expired() for output in joined] == [lean] * model.config.num_hidden_layers
        loss.backward()
        results.append((loss.item(), _grads(model)))
    (stock_loss, stock_grads), (lean_loss, lean_grads) = results
    assert lean_loss == stock_loss and stock_grads.keys() == lean_grads.keys()
    assert all(torch.equal(lean_grads[name], grad) for name, grad in stock_grads.items())


def test_output_projection_keeps_the_joined_output_where_the_pieces_are_copies():
    """sdpa's math kernel writes ``[batch, heads, tokens, dim]``, so each sample's output is a transposed copy that
    sdpa does not keep: keeping the pieces would save nothing, and the output projection keeps the joined output."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tunelab.training.packed_attention import use_per_sample_attention

    model = _model()
    assert use_per_sample_attention(model)
    joined: list[StorageWeakRef] = []
    for name, module in model.named_modules():
        if name.endswith("o_proj"):
            module.register_forward_pre_hook(
                lambda _module, args, kept=joined: kept.append(StorageWeakRef(args[0].untyped_storage())))
    with sdpa_kernel(SDPBackend.MATH):
        loss = _ours(model, _flat(_alpaca_samples(3)))
    assert len(joined) == model.config.num_hidden_layers and not any(output.expired() for output in joined)
    loss.backward()


def test_output_projections_keeping_pieces_survive_a_deep_copy_and_leave_the_state_dict_alone():
    import copy

    from tunelab.training.packed_attention import use_per_sample_attention

    stock, model = _model(), _model()
    assert use_per_sample_attention(model)
    assert model.state_dict().keys() == stock.state_dict().keys()
    twin = copy.deepcopy(model)
    projection = twin.model.layers[0].self_attn.o_proj
    assert projection.forward.__self__ is projection and projection._tunelab_inner_forward.__self__ is projection
    batch = _flat(_alpaca_samples(2))
    assert _close(_ours(twin, batch), _ours(stock, batch))


def test_trl_fused_head_scores_only_labelled_positions_with_the_same_results(monkeypatch):
    """compact_trl_fused_head: TRL's per-token log-probabilities (what DPO, KTO, GRPO and RLOO train on) and their
    gradients are unchanged, while the output layer sees only the labelled positions."""
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.training.token_loss import compact_trl_fused_head

    model = _model()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    batch = _padded(_alpaca_samples(4))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    projected: list[int] = []

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(**inputs, labels=batch["labels"], fused_lm_head=True)
        out.log_probs.sum().backward()
        grads = _grads(model)
        model.zero_grad()
        return out.log_probs.detach(), grads

    # TRL's own choice, whether or not an earlier run in this process compacted it; restored after the test
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "original", trl_utils._use_triton))
    real = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        projected.append(hidden.shape[0])
        return real(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    every, every_grads = run()
    compact_trl_fused_head()
    compact_trl_fused_head()  # once per process: a second call changes nothing
    labelled, labelled_grads = run()
    assert projected[0] == batch["labels"][:, 1:].numel()
    assert projected[1] == int((batch["labels"][:, 1:] != -100).sum()) < projected[0]
    assert _close(labelled, every, 1e-5)
    for name, grad in every_grads.items():
        assert _close(labelled_grads[name], grad, 1e-4), name


def _saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct tensors autograd keeps for the backward of one forward, and its loss."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _ours(model, batch)
    return sum(storages.values()), loss


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_mlps_give_the_same_loss_and_gradients_and_keep_less(method, arch, monkeypatch):
    """The SwiGLU MLP that keeps gate and up only: the same loss and gradients as transformers' own MLP.

    Counted under a saved-tensor hook (which turns the product's recomputation off, as checkpointing does), exactly
    one intermediate-wide tensor per token and layer less is kept. Without one, the down projection's input (the
    product) is not kept at all: its storage is freed when the forward ends, and the backward recomputes it."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from tunelab.training import lean_mlp

    batch = _flat(_alpaca_samples(4))
    products: list[StorageWeakRef] = []
    real_apply = lean_mlp.SiluMul.apply

    def recording(gate, up):
        product = real_apply(gate, up)
        products.append(StorageWeakRef(product.untyped_storage()))
        return product

    monkeypatch.setattr(lean_mlp.SiluMul, "apply", recording)

    def build(lean: bool):
        model = _model(arch)
        if lean:
            assert lean_mlp.use_lean_mlps(model) == model.config.num_hidden_layers
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        return model

    stock = build(lean=False)
    stock_saved, stock_loss = _saved_bytes(stock, batch)
    stock_loss.backward()
    stock_grads = _grads(stock)
    lean = build(lean=True)
    lean_saved, _ = _saved_bytes(lean, batch)
    tokens, config = batch["input_ids"].numel(), lean.config
    assert stock_saved - lean_saved == tokens * config.intermediate_size * 4 * config.num_hidden_layers

    lean.zero_grad()
    products.clear()
    loss = _ours(lean, batch)
    assert len(products) == config.num_hidden_layers and all(product.expired() for product in products)
    loss.backward()
    assert abs(loss.item() - stock_loss.item()) <= 1e-6 * abs(stock_loss.item())
    lean_grads = _grads(lean)
    assert lean_grads.keys() == stock_grads.keys() and stock_grads
    for name in stock_grads:
        assert _close(lean_grads[name], stock_grads[name], 1e-5), name


def test_only_mlps_that_compute_exactly_swiglu_are_changed():
    from torch import nn

    from tunelab.training.lean_mlp import use_lean_mlps

    class GeluMLP(nn.Module):  # the attribute names of a SwiGLU MLP, another computation
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))

    model = nn.Sequential(GeluMLP())
    assert use_lean_mlps(model) == 0 and "forward" not in vars(model[0])
    gelu = _model("llama")
    for layer in gelu.model.layers:
        layer.mlp.act_fn = nn.GELU()
    assert use_lean_mlps(gelu) == 0


def _fused_head_model(method: str, packed: bool, attention: str = "sdpa") -> torch.nn.Module:
    """The test Qwen2 with TRL's fused head, as TRL's trainers use it, or padding-free as tunelab runs it; LoRA or
    full."""
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.padding_free import pack_fused_forward

    model = _model("qwen2", attention)
    add_fused_lm_head(model)
    if packed:
        use_per_sample_attention(model)
        pack_fused_forward(model)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return model


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_preference_batches_run_padding_free_with_the_same_log_probs_and_gradients(method, attention):
    """DPO's padded batch of chosen and rejected answers (tunelab's real encoded pairs) through TRL's fused head, as
    it is and padding-free: the same per-token log-probabilities in the padded layout, the same gradients."""
    from tunelab.config import DataSettings
    from tunelab.data.pipeline import DataReport, tokenize_rows
    from tunelab.data.registry import load_dataset_rows
    from tunelab.models.loading import load_tokenizer
    from tunelab.training.collate import PairCollator

    tokenizer = load_tokenizer(str(FIXTURES / "tokenizers" / "minimind"), "chatml")
    rows = load_dataset_rows("dpo_en_demo", str(FIXTURES / "data" / "llamafactory"), "preference", max_samples=3).rows
    pairs = tokenize_rows(rows, tokenizer, DataSettings(cutoff_len=1024), "preference", DataReport(), "train")
    batch = PairCollator(0)(pairs)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    assert (batch["attention_mask"] == 0).any()  # there is padding to leave out
    results = []
    for packed in (False, True):
        model = _fused_head_model(method, packed, attention)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                        fused_lm_head=True, use_cache=False)
        (outputs.log_probs.sum(1) * torch.tensor([1.0, 0.5, -1.0, 2.0, 0.3, -0.7])).sum().backward()
        results.append((outputs.log_probs.detach(), _grads(model)))
    (plain, plain_grads), (packed, packed_grads) = results
    assert packed.shape == plain.shape == (6, batch["input_ids"].shape[1] - 1)
    assert _close(packed, plain, 1e-5)
    assert packed_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        assert _close(packed_grads[name], plain_grads[name], 1e-4), name


def _group_rl_batch(tokenizer) -> tuple[dict[str, torch.Tensor], int]:
    """A GRPO/RLOO training batch as TRL builds it: real GSM8K questions in the chat template, left-padded, then
    their answers' first lines as completions, right-padded; labels only on the completions."""
    import json

    records = [json.loads(line) for line in (FIXTURES / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:4]]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False) for r in records]
    completions = [tokenizer(r["answer"].split("\n")[0], add_special_tokens=False)["input_ids"] for r in records]
    width, keep = max(map(len, prompts)), max(map(len, completions))
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        left, right = width - len(prompt), keep - len(completion)
        rows.append([0] * left + prompt + completion + [0] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
    input_ids, attention_mask = torch.tensor(rows), torch.tensor(masks)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-keep] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, keep


@pytest.mark.parametrize("method", ["full", "lora"])
def test_group_rl_batches_run_padding_free_with_the_same_log_probs_and_gradients(method):
    """GRPO's and RLOO's batch (left-padded prompts, right-padded completions) through TRL's fused head, as it is and
    padding-free: the same completion log-probabilities and gradients. TRL's own forward counts the left padding in
    the positions; rotary attention depends only on the distance between positions, so the results agree."""
    from tunelab.models.loading import load_tokenizer

    batch, keep = _group_rl_batch(load_tokenizer(str(FIXTURES / "tokenizers" / "minimind"), "chatml"))
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 0).any()
    results = []
    for packed in (False, True):
        model = _fused_head_model(method, packed)
        log_probs = model(**batch, fused_lm_head=True, use_cache=False).log_probs[:, -keep:]  # what TRL reads
        completion_mask = batch["attention_mask"][:, -keep:]
        (log_probs * completion_mask * torch.tensor([[1.0], [-0.5], [2.0], [0.3]])).sum().backward()
        results.append(((log_probs * completion_mask).detach(), _grads(model)))
    (plain, plain_grads), (packed, packed_grads) = results
    assert _close(packed, plain, 1e-5)
    assert packed_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        assert _close(packed_grads[name], plain_grads[name], 1e-4), name


def test_the_padding_free_forward_keeps_the_signature_and_generation():
    """Generation checks its keyword arguments against the forward's signature, and runs the plain forward."""
    import inspect

    from trl.trainer.utils import add_fused_lm_head

    from tunelab.training.padding_free import pack_fused_forward

    model = _model("qwen2")
    add_fused_lm_head(model)
    prompt = torch.tensor([[1, 2, 3, 4]])
    signature, expected = inspect.signature(model.forward), model.generate(prompt, max_new_tokens=4, do_sample=False)
    pack_fused_forward(model)
    assert inspect.signature(model.forward) == signature
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("reentrant", [False, True])
def test_lean_layers_under_gradient_checkpointing_give_the_same_gradients(reentrant):
    """Checkpointing decides what is kept through its own saved-tensor hooks (or a no-grad first forward); the lean
    MLP's and norms' recomputations step aside there, and the gradients stay transformers' own."""
    from tunelab.training.lean_mlp import use_lean_mlps
    from tunelab.training.lean_norms import use_lean_norm_weights, use_lean_norms

    batch = _flat(_alpaca_samples(4))
    grads = []
    for lean in (False, True):
        model = _model("qwen2")
        if lean:
            use_lean_mlps(model)
            use_lean_norms(model)
            use_lean_norm_weights(model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()
        _ours(model, batch).backward()
        grads.append(_grads(model))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert _close(grads[1][name], grads[0][name], 1e-5), name


def _assert_same_loss_and_gradients(stock: tuple[float, dict], lean: tuple[float, dict]) -> None:
    """(loss, gradients) of a lean model against the stock one's: loss within 1e-6, gradients within 1e-5."""
    (stock_loss, stock_grads), (lean_loss, lean_grads) = stock, lean
    assert abs(lean_loss - stock_loss) <= 1e-6 * abs(stock_loss)
    assert lean_grads.keys() == stock_grads.keys() and stock_grads
    for name in stock_grads:
        assert _close(lean_grads[name], stock_grads[name], 1e-5), name


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_norms_give_the_same_loss_and_gradients_and_keep_no_norm_output(method, arch, tmp_path):
    """The attention and the MLP keep their norms' inputs, not the norms' outputs: the norm outputs' storages are freed
    when the forward ends, and the loss and gradients are those of the stock model (lean MLPs on both sides).

    The model comes from ``from_pretrained``, as in training: with the ``kernels`` package installed, transformers
    then re-kernelizes its norms on ``model.train()``, which resets any ``forward`` set on them."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from transformers import AutoModelForCausalLM

    from tunelab.training.lean_mlp import use_lean_mlps
    from tunelab.training.lean_norms import use_lean_norms

    batch = _flat(_alpaca_samples(4))
    _model(arch).save_pretrained(tmp_path)
    results = []
    for lean in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
        use_lean_mlps(model)
        if lean:
            assert use_lean_norms(model) == 2 * model.config.num_hidden_layers
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        model.train()  # as the Trainer does
        outputs: list[StorageWeakRef] = []
        for name, module in model.named_modules():
            if name.endswith(("input_layernorm", "post_attention_layernorm")):
                module.register_forward_hook(
                    lambda _module, _args, output, kept=outputs: kept.append(StorageWeakRef(output.untyped_storage())))
        loss = _ours(model, batch)
        assert len(outputs) == 2 * model.config.num_hidden_layers
        # with LoRA the first norm's input (the frozen embedding's output) needs no gradient: its norm keeps nothing,
        # so its output is kept as before; the stock layers keep every one
        freed = [lean and not (method == "lora" and index == 0) for index in range(len(outputs))]
        assert [output.expired() for output in outputs] == freed
        loss.backward()
        results.append((loss.item(), _grads(model)))
    _assert_same_loss_and_gradients(*results)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_norm_weights_keep_no_normalised_input_and_the_same_gradients(method, arch, monkeypatch):
    """Where the norms' weights train, each standard RMSNorm keeps its input, not its normalised input, for the
    weight's gradient: the normalised inputs' storages are freed when the forward ends, and the loss and gradients
    are the stock model's. With LoRA (frozen norms) nothing changes."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from tunelab.training import lean_norms
    from tunelab.training.lean_mlp import ours

    batch = _flat(_alpaca_samples(4))
    replaced: list[StorageWeakRef] = []
    real_packer = lean_norms._normalised_packer

    def spying(norm_input, eps):
        pack = real_packer(norm_input, eps)

        def spy(tensor):
            packed = pack(tensor)
            if not isinstance(packed, torch.Tensor):
                replaced.append(StorageWeakRef(tensor.untyped_storage()))
            return packed

        return ours(spy)

    monkeypatch.setattr(lean_norms, "_normalised_packer", spying)
    results = []
    for lean in (False, True):
        model = _model(arch)
        norms = 2 * model.config.num_hidden_layers + 1  # two per layer and the final one
        if lean:
            assert lean_norms.use_lean_norm_weights(model) == norms
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        replaced.clear()
        loss = _ours(model, batch)
        assert len(replaced) == (norms if lean and method == "full" else 0)
        assert all(storage.expired() for storage in replaced)
        loss.backward()
        results.append((loss.item(), _grads(model)))
    _assert_same_loss_and_gradients(*results)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text", "phi3", "mixtral", "olmo2"])
def test_lean_norms_keep_the_gradients_of_other_decoder_layers(arch, tmp_path):
    """Other layouts: norms inside the attention (Qwen3), a pre-feed-forward norm (Gemma 3), a fused gate/up (Phi-3),
    experts (Mixtral), norms after the attention and the MLP (OLMo 2, where no MLP input is a norm's output and
    nothing is recomputed). The loss and gradients (full fine-tuning: the norms' weights train too) stay the stock
    model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.training.lean_mlp import use_lean_mlps
    from tunelab.training.lean_norms import use_lean_norm_weights, use_lean_norms

    config = AutoConfig.for_model(arch, vocab_size=6400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").save_pretrained(tmp_path)
    batch = _flat(_alpaca_samples(3))
    results = []
    for lean in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
        use_lean_mlps(model)
        if lean:
            assert use_lean_norms(model) > 0
            use_lean_norm_weights(model)  # Qwen3's too; Gemma 3's and OLMo 2's norms are not the standard one
        model.train()
        loss = _ours(model, batch)
        loss.backward()
        results.append((loss.item(), _grads(model)))
    _assert_same_loss_and_gradients(*results)


def test_lean_norms_survive_a_deep_copy_and_leave_the_state_dict_alone():
    """A reference model is a deep copy: its backward must run its own norms again, and no norm appears twice in a
    state dict."""
    import copy

    from tunelab.training.lean_norms import use_lean_norms

    stock, lean = _model("qwen2"), _model("qwen2")
    use_lean_norms(lean)
    assert lean.state_dict().keys() == stock.state_dict().keys()
    twin = copy.deepcopy(lean)
    twin_layer = twin.model.layers[0]
    assert twin_layer.self_attn._tunelab_fed_by is twin_layer.input_layernorm
    assert twin_layer.mlp._tunelab_inner_forward.__self__ is twin_layer.mlp
    batch = _flat(_alpaca_samples(2))
    grads = []
    for model in (stock, twin):
        with torch.no_grad():  # the copy's norms differ from the original's from here on
            for layer in model.model.layers:
                layer.input_layernorm.weight.mul_(2.0)
                layer.post_attention_layernorm.weight.add_(0.5)
        _ours(model, batch).backward()
        grads.append(_grads(model))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert _close(grads[1][name], grads[0][name], 1e-5), name
    assert lean.model.layers[0].input_layernorm.weight.eq(1.0).all()


def test_vision_language_models_keep_padded_batches():
    """Image tokens take positions of their own (Qwen2-VL's multimodal rotary positions): a vision-language model's
    batches stay padded, in every stage; the same batch settings on a text model go padding-free."""
    from types import SimpleNamespace

    from transformers import AutoModelForImageTextToText

    from tunelab.training.token_loss import supports_padding_free

    cfg = SimpleNamespace(per_device_train_batch_size=4, packing=False, finetuning_type="lora")
    vision = AutoModelForImageTextToText.from_pretrained(str(FIXTURES / "models" / "tiny-qwen2-vl"),
                                                         attn_implementation="sdpa")
    assert not supports_padding_free(vision, cfg)
    assert supports_padding_free(_model("qwen2"), cfg)
