"""`tunelab export`: merged models equal base + adapter, reward models stay reward models, bitsandbytes exports
reload, GGUF files load back in transformers with the same tokens and logits, and match llama.cpp's own
converter tensor for tensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
TEXT = "Once upon a time, there was a little girl named Lily. She liked cats! 3333 ...?"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its source distribution carries llama.cpp's converter


def _export(*args: str) -> str:
    result = CliRunner().invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def _train(config: str, out: Path, *overrides: str) -> Path:
    from tunelab.stage_registry import all_stages

    cfg = load_config(REPO / "examples" / config, [f"output_dir={out}", f"dataset_dir={DATA}", "plot_loss=false",
                                                  *overrides])
    all_stages()[cfg.stage].run()(cfg)
    return out


# --- merged Hugging Face exports -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged(demo_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "demo-merged"
    output = _export("--adapter", str(demo_adapter), "--output", str(out))
    assert f"to {out}" in output and "tunelab chat --model" in output
    return out


def test_lora_merge_equals_base_plus_adapter(merged: Path, demo_adapter: Path) -> None:
    from tunelab.inference.predictor import Predictor

    with_adapter, exported = Predictor(adapter=str(demo_adapter)), Predictor(str(merged))
    ids = with_adapter.tokenizer(TEXT).input_ids
    assert torch.allclose(_logits(with_adapter.model, ids), _logits(exported.model, ids), atol=1e-4, rtol=0)
    # the demo trains lm_head apart from the tied embeddings: the export keeps both
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False
    query = ["--query", "Write a story about Tim and a frog.", "--max-new-tokens", "60"]
    chats = [subprocess.run([sys.executable, "-m", "tunelab", "chat", *source, *query], capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
             for source in (["--adapter", str(demo_adapter)], ["--model", str(merged)])]
    assert chats[0].returncode == chats[1].returncode == 0, chats[1].stderr
    assert "Tim" in chats[0].stdout and chats[0].stdout == chats[1].stdout
    files = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json", "README.md",
            "training_config.yaml", "export.json"} <= files
    card = (merged / "README.md").read_text()
    assert "base_model: stories260K" in card and "`demo_stories`" in card and "stage `sft`" in card
    assert not list(merged.parent.glob(".*tmp*"))  # the temporary folder is gone


@pytest.mark.slow
def test_dora_and_freeze_exports(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.inference.loading import load_for_inference

    dora = _train("stories_dora_sft.yaml", tmp_path / "dora", "max_steps=4")
    _export("--adapter", str(dora), "--output", str(tmp_path / "dora-merged"))
    tokenizer, reference, _ = load_for_inference(None, str(dora), None, dtype=torch.float32)
    ids = tokenizer(TEXT).input_ids
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "dora-merged")
    assert torch.allclose(_logits(reference, ids), _logits(exported, ids), atol=1e-4, rtol=0)

    freeze = _train("stories_freeze_sft.yaml", tmp_path / "freeze", "max_steps=4")
    _export("--model", str(freeze), "--output", str(tmp_path / "freeze-bf16"), "--dtype", "bf16")
    run, exported = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16)
                     for p in (freeze, tmp_path / "freeze-bf16"))
    assert json.loads((tmp_path / "freeze-bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(_logits(run, ids), _logits(exported, ids))  # the run's weights, in bf16
    assert "a fine-tune of `stories260K`" in (tmp_path / "freeze-bf16" / "README.md").read_text()


@pytest.mark.slow
def test_reward_model_exports_as_sequence_classification(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from tunelab.inference.reward import RewardScorer

    rm = _train("stories_rm.yaml", tmp_path / "rm", "max_steps=4")
    _export("--adapter", str(rm), "--output", str(tmp_path / "rm-merged"))
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm-merged")
    scorer = RewardScorer(adapter=str(rm))
    prompt, answer = "Write a story about Tim and a frog.", "Tim had a frog. They played all day."
    ids = scorer.sequence(prompt, answer)
    with torch.inference_mode():
        value = exported(torch.tensor([ids])).logits[0, 0].item()
    assert value == pytest.approx(scorer(prompt, answer), abs=1e-4)


@pytest.mark.slow
def test_bitsandbytes_8bit_export_reloads_quantized(merged: Path, demo_adapter: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "demo-8bit"
    _export("--adapter", str(demo_adapter), "--output", str(out), "--quantization", "8")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_8bit"] is True
    quantized, full = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(merged)
    assert type(quantized.model.layers[0].mlp.down_proj).__name__ == "Linear8bitLt"
    ids = AutoTokenizer.from_pretrained(out)(TEXT).input_ids
    # the same model within the quantization's error: the same top-1 token at almost every position
    agree = (_logits(quantized, ids).argmax(-1) == _logits(full, ids).argmax(-1)).float().mean().item()
    assert agree > 0.9


@pytest.mark.slow
def test_bitsandbytes_4bit_export_reloads_quantized(tiny_model, tmp_path: Path) -> None:
    """On a model whose widths bitsandbytes' CPU 4-bit kernel takes (the embedded model's 172 it does not)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, out = tiny_model("llama"), tmp_path / "tiny-4bit"
    _export("--model", str(source), "--output", str(out), "--quantization", "4")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["load_in_4bit"] is True and config["bnb_4bit_quant_type"] == "nf4"
    quantized, full = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(source)
    assert type(quantized.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    ids = AutoTokenizer.from_pretrained(out)("Hello, how are you today?").input_ids
    pair = torch.stack([_logits(quantized, ids).flatten(), _logits(full, ids).flatten()])
    assert 0.95 < torch.corrcoef(pair)[0, 1].item() < 1  # the same model, within NF4's error


# --- GGUF ------------------------------------------------------------------------------------------------


def _gguf_round_trip(folder: Path, file: str, reference: Path) -> tuple[float, bool]:
    """(max |logit difference| / max |logit|, identical token ids) of the GGUF read by transformers against the hf
    model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(reference), AutoTokenizer.from_pretrained(reference)
    ids = tokenizer(TEXT).input_ids
    expected = _logits(model, ids)
    difference = (_logits(gguf_model, ids) - expected).abs().max().item() / expected.abs().max().item()
    return difference, gguf_tokenizer(TEXT).input_ids == ids


@pytest.mark.parametrize(("kind", "tolerance"), [("f32", 0.0), ("f16", 2e-3), ("q8_0", 4e-2)])
def test_gguf_of_the_embedded_model_loads_back(merged: Path, tmp_path: Path, kind: str, tolerance: float) -> None:
    out = tmp_path / "demo-gguf"
    output = _export("--model", str(merged), "--output", str(out), "--format", "gguf", "--quantization", kind,
                     "--ollama")
    assert "llama GGUF, llama tokenizer" in output and "llama-cli -m" in output
    difference, same_tokens = _gguf_round_trip(out, f"demo-gguf-{kind}.gguf", merged)
    assert same_tokens and difference <= tolerance, difference
    import gguf

    reader = gguf.GGUFReader(out / f"demo-gguf-{kind}.gguf")
    template = reader.fields["tokenizer.chat_template"].contents()
    assert template == (merged / "chat_template.jinja").read_text()
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./demo-gguf-{kind}.gguf") and 'PARAMETER stop "</s>"' in modelfile


@pytest.fixture(scope="module")
def tiny_qwen2_llama3(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer) -> Path:
    """A random Qwen2 with the real Llama-3 byte-level BPE tokenizer (transformers reads it as a Qwen2 tokenizer,
    which adds <|endoftext|>; the vocabulary is sized to match)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    folder = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    config.save_pretrained(folder)
    llama3_tokenizer.save_pretrained(folder)
    config.vocab_size = len(AutoTokenizer.from_pretrained(folder))  # read as a Qwen2 tokenizer, beside the config
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_gguf_of_a_qwen2_with_a_byte_level_tokenizer(tiny_qwen2_llama3: Path, tmp_path: Path) -> None:
    out = tmp_path / "qwen2-gguf"
    output = _export("--model", str(tiny_qwen2_llama3), "--output", str(out), "--format", "gguf", "--quantization",
                     "f32", "--ollama")
    assert "qwen2 GGUF, gpt2 tokenizer" in output
    difference, same_tokens = _gguf_round_trip(out, "qwen2-gguf-f32.gguf", tiny_qwen2_llama3)
    assert same_tokens and difference == 0.0
    import gguf

    fields = gguf.GGUFReader(out / "qwen2-gguf-f32.gguf").fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2" and len(fields["tokenizer.ggml.merges"].contents()) > 1000
    assert 'PARAMETER stop "<|eot_id|>"' in (out / "Modelfile").read_text()  # Llama-3's header format


# --- against llama.cpp's own converter ----------------------------------------------------------------------

# Metadata that differs on purpose (docs/export.md): the model's name is the export folder's, not the source
# folder's; the tags are the export's model card's.
DELIBERATE = {"general.name", "general.finetune", "general.basename", "general.tags"}


@pytest.fixture(scope="session")
def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py and its gguf-py, from llama-cpp-python's source distribution (cached)."""
    target = REPO / ".pytest_cache" / "llama_cpp_converter" / LLAMA_CPP_PYTHON.split("==")[1]
    script = target / "convert_hf_to_gguf.py"
    if not script.is_file():
        download = target.parent / "download"
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   LLAMA_CPP_PYTHON, "-d", str(download)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip(f"could not download {LLAMA_CPP_PYTHON}'s source distribution (no package index?)")
        archive = next(download.glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            wanted = ("conversion/", "gguf-py/", "convert_hf_to_gguf.py")
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(wanted)]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(target, members=members, filter="data")
    return target


def _convert_with_llama_cpp(converter: Path, model: Path, out: Path, kind: str, pre: str | None = None) -> Path:
    """Run the converter on ``model``; ``pre`` names the BPE pre-tokenizer when the converter cannot recognise the
    tokenizer by its hash (it knows only the tokenizers listed in its source)."""
    patch = (f"import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}; "
             if pre else "")
    code = (f"import sys, runpy; sys.path[:0] = [{str(converter)!r}, {str(converter / 'gguf-py')!r}]; {patch}"
            f"sys.argv = ['convert_hf_to_gguf.py', {str(model)!r}, '--outfile', {str(out)!r}, '--outtype', {kind!r}]; "
            f"runpy.run_path({str(converter / 'convert_hf_to_gguf.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def gguf_differences(ours: Path, theirs: Path) -> list[str]:
    """Every metadata key and tensor where the two files differ (names, shapes, types, bytes)."""
    import gguf

    readers = [gguf.GGUFReader(path) for path in (ours, theirs)]
    fields = [{k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")} for r in readers]
    found = [f"metadata {key}: {fields[0].get(key)!r:.80} vs {fields[1].get(key)!r:.80}"
             for key in sorted(set(fields[0]) | set(fields[1])) if fields[0].get(key) != fields[1].get(key)]
    tensors = [{t.name: t for t in r.tensors} for r in readers]
    found += [f"tensor {name} only in {'ours' if name in tensors[0] else 'theirs'}"
              for name in sorted(set(tensors[0]) ^ set(tensors[1]))]
    for name in sorted(set(tensors[0]) & set(tensors[1])):
        a, b = tensors[0][name], tensors[1][name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape) or not np.array_equal(a.data, b.data):
            found.append(f"tensor {name}: {a.tensor_type.name} {list(a.shape)} vs {b.tensor_type.name} {list(b.shape)}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_same_file_as_llama_cpp_converter_for_the_embedded_model(converter: Path, merged: Path, tmp_path: Path,
                                                                 kind: str) -> None:
    _export("--model", str(merged), "--output", str(tmp_path / "ours"), "--format", "gguf", "--quantization", kind)
    theirs = _convert_with_llama_cpp(converter, merged, tmp_path / "theirs.gguf", kind)
    differences = gguf_differences(tmp_path / "ours" / f"ours-{kind}.gguf", theirs)
    assert [d for d in differences if d.split()[1].rstrip(":") not in DELIBERATE] == []


@pytest.mark.slow
def test_same_file_as_llama_cpp_converter_for_qwen2_bpe(converter: Path, tiny_qwen2_llama3: Path,
                                                          tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    _export("--model", str(tiny_qwen2_llama3), "--output", str(hf))  # the merged model both convert
    _export("--model", str(hf), "--output", str(tmp_path / "ours"), "--format", "gguf", "--quantization", "f16")
    theirs = _convert_with_llama_cpp(converter, hf, tmp_path / "theirs.gguf", "f16", pre="qwen2")
    differences = gguf_differences(tmp_path / "ours" / "ours-f16.gguf", theirs)
    assert [d for d in differences if d.split()[1].rstrip(":") not in DELIBERATE] == []


# --- configs ---------------------------------------------------------------------------------------------------


def test_export_examples_are_valid() -> None:
    from tunelab.export.settings import load_export_settings

    examples = sorted((REPO / "examples" / "export").glob("*.yaml"))
    assert {p.name for p in examples} >= {"llama3_lora_sft.yaml", "qwen2.5_7b_lora_merge.yaml", "demo_merge.yaml",
                                          "demo_gguf.yaml"}
    for path in examples:
        settings = load_export_settings(str(path), {})
        assert settings.export_dir and (settings.adapter_name_or_path or settings.model_name_or_path)
    assert load_export_settings(str(REPO / "examples/export/demo_gguf.yaml"), {}).export_gguf_type == "q8_0"


@pytest.mark.slow
def test_llamafactory_merge_config_runs_with_only_the_paths_changed(llama3_tokenizer, tmp_path: Path) -> None:
    """LLaMA-Factory's merge_lora/llama3_lora_sft.yaml on a tiny Llama with the real Llama-3 tokenizer and a LoRA
    trained on it with template llama3."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    base = tmp_path / "tiny-llama3"
    llama3_tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(llama3_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=llama3_tokenizer.bos_token_id, eos_token_id=llama3_tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    adapter = _train("demo_lora_sft.yaml", tmp_path / "sft", f"model_name_or_path={base}", "template=llama3",
                     "max_steps=2")
    text = (REPO / "examples" / "export" / "llama3_lora_sft.yaml").read_text()
    for old, new in (("meta-llama/Meta-Llama-3-8B-Instruct", base), ("saves/llama3-8b/lora/sft", adapter),
                     ("output/llama3_lora_sft", tmp_path / "merged")):
        assert old in text
        text = text.replace(old, str(new))
    (tmp_path / "merge.yaml").write_text(text)
    _export(str(tmp_path / "merge.yaml"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.config.vocab_size == len(llama3_tokenizer)
    assert (tmp_path / "merged" / "chat_template.jinja").read_text().count("<|start_header_id|>") >= 1


def test_failed_export_leaves_nothing_behind(merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.export.to_gguf as to_gguf

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(to_gguf, "write_gguf", broken)
    result = CliRunner().invoke(app, ["export", "--model", str(merged), "--output", str(tmp_path / "out"),
                                      "--format", "gguf"])
    assert result.exit_code != 0
    assert list(tmp_path.iterdir()) == []  # neither the export folder nor its temporary folder
