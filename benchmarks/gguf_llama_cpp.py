"""llama.cpp itself on tunelab's GGUF files: the same greedy tokens as transformers on the same prompts.

Needs llama-cpp-python, which builds llama.cpp from source (minutes of CPU), so it is not part of ``make test``::

    .venv/bin/pip install llama-cpp-python diskcache
    .venv/bin/python benchmarks/gguf_llama_cpp.py                       # demo LoRA (trained here) + a tiny Qwen2
    .venv/bin/python benchmarks/gguf_llama_cpp.py --adapter outputs/demo --types f32,f16,q8_0

For each source model and each GGUF type it exports with ``tunelab export --format gguf``, loads the file with
``llama_cpp.Llama``, and generates greedily from the raw prompt text (no chat template: both sides see the same
tokens) for ``--max-tokens`` tokens, next to transformers on the hf export. It prints, per prompt, whether the
prompt tokenizes to the same ids in llama.cpp and transformers, and how many generated tokens agree before the
first difference. Two sources: the demo's LoRA merged into the embedded Llama (SentencePiece tokenizer), and a
random Qwen2 with the real Llama-3 byte-level BPE tokenizer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO_ROOT, table, to_json  # noqa: E402  (a sibling module)

PROMPTS = ["Once upon a time, there was a little girl named Lily.",
           "Tom had a red ball. One day, he went to the park and",
           "The cat and the dog were friends. They liked to"]


def _tunelab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunelab", *args], check=True, capture_output=True)


def _demo_adapter(work: Path) -> Path:
    out = work / "demo"
    _tunelab("train", str(REPO_ROOT / "examples" / "demo_lora_sft.yaml"), f"output_dir={out}",
             f"dataset_dir={REPO_ROOT / 'examples' / 'data'}", "plot_loss=false")
    return out


def _tiny_qwen2(work: Path) -> Path:
    import lzma
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    folder = work / "tiny-qwen2"
    packed = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / "llama3"
    tokenizer_dir = work / "llama3-tokenizer"
    shutil.copytree(packed, tokenizer_dir, ignore=shutil.ignore_patterns("*.xz"))
    (tokenizer_dir / "tokenizer.json").write_bytes(lzma.decompress((packed / "tokenizer.json.xz").read_bytes()))
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    config.vocab_size = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _transformers_greedy(folder: Path, prompt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(prompt).input_ids
    with torch.inference_mode():
        output = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
                                min_new_tokens=max_tokens, pad_token_id=tokenizer.eos_token_id)
    return ids, output[0, len(ids):].tolist()


def _llama_cpp_greedy(file: Path, prompt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(file), n_ctx=512, verbose=False, seed=0)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    generated = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        generated.append(token)
        if len(generated) == max_tokens:
            break
    return ids, generated


def _agreeing(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", help="a trained adapter (default: train the demo's)")
    parser.add_argument("--types", default="f32,f16,q8_0")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import llama_cpp

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        adapter = Path(args.adapter) if args.adapter else _demo_adapter(work)
        merged = work / "demo-merged"
        _tunelab("export", "--adapter", str(adapter), "--output", str(merged))
        for source_name, source in (("embedded Llama + demo LoRA", merged), ("Qwen2 + Llama-3 BPE", _tiny_qwen2(work))):
            for kind in args.types.split(","):
                out = work / f"{source.name}-{kind}"
                _tunelab("export", "--model", str(source), "--output", str(out), "--format", "gguf",
                         "--quantization", kind)
                for prompt in PROMPTS:
                    hf_prompt, hf_tokens = _transformers_greedy(source, prompt, args.max_tokens)
                    cpp_prompt, cpp_tokens = _llama_cpp_greedy(out / f"{out.name}-{kind}.gguf", prompt,
                                                               args.max_tokens)
                    rows.append({"source": source_name, "type": kind, "prompt": prompt,
                                 "same_prompt_ids": hf_prompt == cpp_prompt,
                                 "agreeing_tokens": _agreeing(hf_tokens, cpp_tokens), "of": args.max_tokens})
    if args.json:
        print(to_json({"llama_cpp_python": llama_cpp.__version__, "rows": rows}))
        return
    print(f"llama-cpp-python {llama_cpp.__version__}; greedy, {args.max_tokens} tokens per prompt")
    body = [[row["source"], row["type"], "same" if row["same_prompt_ids"] else "DIFFER",
             f"{row['agreeing_tokens']}/{row['of']}  {row['prompt'][:40]}"] for row in rows]
    print("\n".join(table(["source", "type", "prompt ids", "agreeing tokens"], body, widths=[28, 5, 10],
                          align="<<<<", gap=" ")))


if __name__ == "__main__":
    main()
