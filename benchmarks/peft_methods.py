"""Fine-tuning methods side by side: every ``finetuning_type`` tunelab offers, on the same model and data.

Run from the repository root::

    .venv/bin/python benchmarks/peft_methods.py --threads 1             # random Qwen2s + real tokenizer
    .venv/bin/python benchmarks/peft_methods.py --only lora,qlora-4bit,full --skip-memory
    .venv/bin/python benchmarks/peft_methods.py --model /path/to/model --memory-model /path/to/larger --device cuda
    .venv/bin/python benchmarks/peft_methods.py --json                   # results as JSON on stdout

Two parts, each configuration in its own fresh Python process (so peak memory is per configuration):

1. **Methods.** One row per method of ``tunelab.method_registry.METHODS`` (lora, adalora, ia3, prefix with and
   without ``prefix_projection``, ptuning, prompt, bitfit, freeze, full), LoRA's switches (DoRA, rsLoRA, PiSSA,
   LoRA+) and QLoRA (``quantization_bit`` 4 and 8 with lora). Each row runs tunelab's SFT stage as a user does
   (``load_config(None, [...overrides])`` then the ``sft`` stage's recipe) on a random small Qwen2 (its
   attention has biases, so BitFit has something to train) with the real minimind tokenizer, on the first
   ``--rows`` records of alpaca_en_demo. Each row sets only its own method's keys. It reports: trainable
   parameters, the size on disk of what the run saved as its model (the ``*.safetensors`` files in the output
   folder: the adapter, or the whole model for bitfit/freeze/full), the logged loss at step 1 and at the last
   step, trained (non-padding) tokens/s from the end of step ``--warmup`` to the last step, and peak memory.
   The learning rate is the same for every row except prompt learning (``--prompt-lr``) and IA3 (``--ia3-lr``),
   which conventionally train with a much higher one; the table shows each row's.
2. **Memory: LoRA against QLoRA**, on a random Qwen2 large enough for the base weights to dominate
   (``--memory-hidden-size``/``--memory-layers``). (a) The base model's weight memory after loading it in
   fp32, fp16, bf16, 8-bit and 4-bit (NF4 with double quantization, tunelab's default) through tunelab's own
   loader: ``model.get_memory_footprint()`` (parameters + buffers), plus the quantization constants that it
   leaves out (4-bit absmax, 8-bit row scales), with the ratios to fp16; the modules bitsandbytes leaves
   unquantized (embeddings, norms) load in fp16 for the 8/4-bit rows. (b) A few training steps (batch 1, short
   sequences) of LoRA in fp32 and bf16 and of QLoRA 8-bit and 4-bit: the weights of the model being trained,
   and the peak memory.

How memory is measured:

* On CUDA: ``torch.cuda.memory_allocated`` when training begins and ``max_memory_allocated`` over the steps.
* On CPU, torch keeps no allocator statistics, so the resident set is sampled every few milliseconds from
  ``/proc/self/statm`` (the harness's ``RssSampler``). Two things would make it lie, and are corrected when
  training begins (outside the timed window): weights that safetensors left memory-mapped from the file (an fp32
  model loaded in fp32) count only once touched and as file pages, so every plain floating-point parameter is
  copied into ordinary memory (same values, same Parameter objects); and memory freed while loading is
  handed back to the system (``malloc_trim``). The methods table shows the growth of the resident set during
  training (activations, gradients, optimizer state: the harness's measure). The memory table
  shows the anonymous resident set (without file pages) when training begins and its peak during training,
  absolute, so that the weights are in it: both include about 0.4 GiB of Python, torch and libraries,
  the same in every row.
* glibc's malloc raises its mmap threshold as large blocks are freed, after which freed activations stay in
  the heap and the resident set drifts run to run: in trials, the same QLoRA run grew by 253 MiB once and 581 MiB
  the next, and LoRA with and without rsLoRA (the same computation) by 381 and 492 MiB. The workers therefore get
  a fixed ``MALLOC_MMAP_THRESHOLD_`` (0 leaves glibc's adaptive one): 4 MiB for the methods table
  (``--malloc-mmap-threshold``; those two LoRA runs then grew by 380 and 375 MiB, at a cost of about 5-15% of
  the tokens/s, alike for every row) and 128 KiB for the memory part (``--memory-malloc-mmap-threshold``: every
  tensor over 128 KiB is returned when freed; this cost a quarter to a third of the tokens/s on a 2-core EPYC,
  which that part does not compare).

Throughput is measured by the harness's ``StepClock`` callback; use ``--threads 1`` on a shared 2-core
machine, and look at the "busy" column (CPU cores used by other processes while timing).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (the shared harness, a sibling module)
    FIXTURES,
    MIB,
    RssSampler,
    SideResult,
    WorkerFailed,
    add_machine_args,
    add_model_args,
    add_run_args,
    add_worker_args,
    machine_description,
    machine_lines,
    make_step_clock,
    prepare_model,
    resolve_device,
    run_worker,
    summarize,
    table,
    to_json,
    worker_env,
)

DATA_DIR = FIXTURES / "data" / "llamafactory"
DEFAULT_TOKENIZER = FIXTURES / "tokenizers" / "minimind"
KIB = 1024
WEIGHT_LOADS = ("fp32", "fp16", "bf16", "8-bit", "4-bit")
LOSS_TOKENS = "assistant replies (tunelab default)"


@dataclass
class Row:
    """One configuration: a name for the table, the method, its own keys, and its learning rate."""

    name: str
    method: str
    overrides: list[str]
    learning_rate: float


@dataclass
class RunSpec:
    """Everything a training worker needs; written to JSON and read by the worker process."""

    row: Row
    model: str
    rows: int
    cutoff_len: int
    steps: int
    warmup: int
    batch_size: int
    grad_accum: int
    seed: int
    bf16: bool
    output_dir: str
    template: str | None = None


@dataclass
class RowResult:
    """What one training worker measured (``side`` is the harness's SideResult, None if the run failed)."""

    row: Row
    error: str | None = None
    side: SideResult | None = None
    saved_bytes: int = 0
    saved_files: list[str] = field(default_factory=list)
    weights_bytes: int = 0  # parameters + buffers + quantization constants of the model being trained
    total_params: int = 0  # parameters of the model being trained, a 4-bit weight counted unpacked
    memory_begin_bytes: int = 0  # CPU: anonymous RSS when training begins; CUDA: memory_allocated
    memory_peak_bytes: int = 0  # CPU: peak anonymous RSS during training; CUDA: max_memory_allocated
    memory_kind: str = ""
    wall_seconds: float = 0.0  # the whole worker: imports, data, loading, training, saving


@dataclass
class WeightLoad:
    """The base model's memory after loading it one way."""

    load: str
    footprint_bytes: int  # model.get_memory_footprint(): parameters + buffers
    quant_state_bytes: int  # 4-bit absmax (and its own constants), 8-bit row scales: not in the footprint
    quantized_bytes: int  # the weights of the quantized linear layers (or, unquantized, of the same layers)
    other_bytes: int  # everything else: embeddings, norms, buffers
    seconds: float
    layer_class: str


# --------------------------------------------------------------------------------------------------
# The configurations
# --------------------------------------------------------------------------------------------------

def method_rows(lr: float, prompt_lr: float, ia3_lr: float, virtual_tokens: int) -> list[Row]:
    """Every method of the registry, LoRA's switches and QLoRA; each sets only its own method's keys."""
    prompt = [f"num_virtual_tokens={virtual_tokens}"]
    return [
        Row("lora", "lora", [], lr),
        Row("lora+dora", "lora", ["use_dora=true"], lr),
        Row("lora+rslora", "lora", ["use_rslora=true"], lr),
        Row("lora+pissa", "lora", ["pissa_init=true"], lr),
        Row("lora+loraplus", "lora", ["loraplus_lr_ratio=16"], lr),
        Row("qlora-8bit", "lora", ["quantization_bit=8"], lr),
        Row("qlora-4bit", "lora", ["quantization_bit=4"], lr),
        Row("adalora", "adalora", [], lr),
        Row("ia3", "ia3", [], ia3_lr),
        Row("prefix", "prefix", [f"pre_seq_len={virtual_tokens}", "prefix_projection=false"], prompt_lr),
        Row("prefix+projection", "prefix", [f"pre_seq_len={virtual_tokens}", "prefix_projection=true"], prompt_lr),
        Row("ptuning", "ptuning", prompt, prompt_lr),
        Row("prompt", "prompt", prompt, prompt_lr),
        Row("bitfit", "bitfit", [], lr),
        Row("freeze", "freeze", [], lr),
        Row("full", "full", [], lr),
    ]


def memory_rows(lr: float) -> list[Row]:
    """LoRA against QLoRA on the larger model (tunelab on CPU: fp32 unless bf16; 4-bit compute in fp32/bf16)."""
    return [
        Row("lora fp32", "lora", [], lr),
        Row("lora bf16", "lora", ["bf16=true"], lr),
        Row("qlora 8-bit", "lora", ["quantization_bit=8"], lr),
        Row("qlora 4-bit", "lora", ["quantization_bit=4"], lr),
        Row("qlora 4-bit bf16", "lora", ["quantization_bit=4", "bf16=true"], lr),
    ]


# --------------------------------------------------------------------------------------------------
# Measurement (runs inside the workers)
# --------------------------------------------------------------------------------------------------

def give_back_freed_memory() -> None:
    """Collect garbage and return the heap's free memory to the system (glibc malloc_trim; no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def quant_state_bytes(model: Any) -> int:
    """Bytes of bitsandbytes' quantization constants, which live outside parameters and buffers."""
    import torch

    total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        if state is not None:
            tensors = [state.absmax, state.code]
            if getattr(state, "nested", False) and state.state2 is not None:
                tensors += [state.state2.absmax, state.state2.code]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        scb = getattr(param, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def tensor_bytes(model: Any) -> int:
    """Parameters + buffers (each counted once), as ``get_memory_footprint`` counts them."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


def make_memory_probe() -> Any:
    """A callback that, when training begins, records the weight memory of the model being trained and (on CPU)
    prepares and samples the anonymous resident set; it must come before the StepClock in the callback list,
    so that the StepClock's own baseline is taken after the preparation."""
    import torch
    from transformers import TrainerCallback

    class MemoryProbe(TrainerCallback):
        def __init__(self) -> None:
            self.cuda = torch.cuda.is_available()
            self.weights_bytes = 0
            self.total_params = 0
            self.begin = 0
            self.peak = 0
            self._sampler: RssSampler | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if model is not None:
                self.weights_bytes = tensor_bytes(model) + quant_state_bytes(model)
                self.total_params = sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None
                                        else p.numel() for p in model.parameters())  # 4-bit: two per byte
            if self.cuda:
                return  # the StepClock records memory_allocated and its peak
            if model is not None:
                with torch.no_grad():  # memory-mapped weights into ordinary memory: counted like all others
                    for param in model.parameters():
                        if type(param) is torch.nn.Parameter and param.is_floating_point():
                            param.data = param.data.clone()
            give_back_freed_memory()
            self._sampler = RssSampler(anonymous=True)
            self.begin = self.peak = self._sampler.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:  # before the final checkpoint is written
                self.finish()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.finish()

        def finish(self) -> None:
            if self._sampler is not None:
                self.peak = self._sampler.stop()

    return MemoryProbe()


def saved_model_files(output_dir: Path) -> list[Path]:
    """What the run saved as its model: the adapter or model weights in the output folder (not checkpoints)."""
    files = sorted(output_dir.glob("*.safetensors"))
    return files or sorted(p for p in output_dir.glob("*.bin") if p.name != "training_args.bin")


def train_worker(spec: RunSpec) -> RowResult:
    """tunelab's SFT stage for one row, configured as a user does (overrides through load_config)."""
    started = time.perf_counter()
    load = os.getloadavg()[0]
    from tunelab.config import load_config
    from tunelab.stage_registry import all_stages

    row = spec.row
    cfg = load_config(None, [
        "stage=sft", f"model_name_or_path={spec.model}", "dataset=alpaca_en_demo", f"dataset_dir={DATA_DIR}",
        f"max_samples={spec.rows}", f"cutoff_len={spec.cutoff_len}", f"finetuning_type={row.method}",
        *row.overrides, f"learning_rate={row.learning_rate}", f"max_steps={spec.steps}",
        f"per_device_train_batch_size={spec.batch_size}", f"gradient_accumulation_steps={spec.grad_accum}",
        f"seed={spec.seed}", *(["bf16=true"] if spec.bf16 and "bf16=true" not in row.overrides else []),
        *([f"template={spec.template}"] if spec.template else []),
        f"output_dir={spec.output_dir}", "overwrite_output_dir=true", "report_to=none", "plot_loss=false",
        "logging_steps=1", "save_steps=100000",
    ])
    probe = make_memory_probe()
    clock = make_step_clock(started)
    all_stages()["sft"].run()(cfg, callbacks=[probe, clock])
    probe.finish()
    side = summarize(row.name, clock, spec.warmup, LOSS_TOKENS)
    side.load_average = load
    files = saved_model_files(Path(spec.output_dir))
    result = RowResult(row=row, side=side, saved_bytes=sum(f.stat().st_size for f in files),
                       saved_files=[f.name for f in files], weights_bytes=probe.weights_bytes,
                       total_params=probe.total_params,
                       wall_seconds=time.perf_counter() - started)
    if clock.cuda:
        result.memory_begin_bytes, result.memory_peak_bytes = clock.memory_base, clock.memory_peak
        result.memory_kind = "CUDA memory_allocated / max_memory_allocated"
    else:
        result.memory_begin_bytes, result.memory_peak_bytes = probe.begin, probe.peak
        result.memory_kind = "anonymous RSS of the process (sampled)"
    return result


def weights_worker(model_path: str) -> list[WeightLoad]:
    """The same model loaded by tunelab's loader in each precision; the footprint of each, one after another."""
    import torch

    from tunelab.config import load_config
    from tunelab.models.loading import load_model, load_tokenizer, quantization_config

    tokenizer = load_tokenizer(model_path)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    results = []
    for load in WEIGHT_LOADS:
        quantization = None
        if load in ("8-bit", "4-bit"):  # tunelab's settings: 4-bit NF4 with double quantization, fp16 compute
            cfg = load_config(None, [f"model_name_or_path={model_path}", f"quantization_bit={load[0]}",
                                     "fp16=true"])
            quantization = quantization_config(cfg)
        started = time.perf_counter()
        model = load_model(model_path, tokenizer, dtype=dtypes.get(load, torch.float16), quantization=quantization)
        seconds = time.perf_counter() - started
        linear = [m for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")]
        quantized = sum(m.weight.numel() * m.weight.element_size() for m in linear)
        footprint = model.get_memory_footprint()
        results.append(WeightLoad(load=load, footprint_bytes=footprint, quant_state_bytes=quant_state_bytes(model),
                                  quantized_bytes=quantized, other_bytes=footprint - quantized, seconds=seconds,
                                  layer_class=type(linear[0]).__name__ if linear else "-"))
        del model
        gc.collect()
    return results


def worker_main(args: argparse.Namespace) -> None:
    """Entry point of a worker process: write its result (or the error) as JSON."""
    spec = json.loads(Path(args.spec).read_text())
    if args.worker == "weights":
        Path(args.result).write_text(to_json(weights_worker(spec["model"])))
        return
    run = RunSpec(**{**spec, "row": Row(**spec["row"])})
    try:
        result = train_worker(run)
    except Exception as error:  # one failing method must not stop the others: reported in the table
        traceback.print_exc()
        message = " ".join(f"{type(error).__name__}: {error}".split())
        result = RowResult(row=run.row, error=message[:600])
    Path(args.result).write_text(to_json(result))


# --------------------------------------------------------------------------------------------------
# Orchestration (parent process)
# --------------------------------------------------------------------------------------------------

def fixed_malloc_env(device: str, threads: int | None, mmap_threshold: int) -> dict[str, str]:
    """The workers' environment, with a fixed glibc mmap threshold on CPU (see the module's docstring)."""
    fixed = device == "cpu" and mmap_threshold
    return worker_env(device, threads, **({"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if fixed else {}))


def run_config(kind: str, name: str, spec: Any, workdir: Path, env: dict[str, str], verbose: bool) -> Any:
    """One configuration in a fresh worker; ``{"error": ...}`` when it failed, which the tables report."""
    try:
        return run_worker(__file__, kind, spec, workdir, name, env=env, verbose=verbose, tail=15)
    except WorkerFailed as error:
        return {"error": str(error)}


def to_row_result(raw: dict, row: Row) -> RowResult:
    if "row" not in raw:  # the worker died before writing its result
        return RowResult(row=row, error=raw.get("error", "no result"))
    side = SideResult(**raw["side"]) if raw.get("side") else None
    return RowResult(**{**raw, "row": Row(**raw["row"]), "side": side})


def run_rows(configs: list[Row], model: str, args: argparse.Namespace, part: str, workdir: Path,
             env: dict[str, str], **sizes: Any) -> list[RowResult]:
    results = []
    for index, row in enumerate(configs):
        print(f"[{part} {index + 1}/{len(configs)}] {row.name} ...", file=sys.stderr, flush=True)
        spec = RunSpec(row=row, model=model, seed=args.seed, bf16=args.bf16, template=args.template,
                       output_dir=str(workdir / f"{part}-{index}"), **sizes)
        result = to_row_result(run_config("train", f"{part}-{index}", spec, workdir, env, args.verbose), row)
        if result.error:
            print(f"    failed: {result.error[:300]}", file=sys.stderr, flush=True)
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def _size(n: float) -> str:
    return f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n / KIB:,.0f} KiB"


def _loss(values: list[float], index: int) -> str:
    return f"{values[index]:.4f}" if values else "-"


def method_table(results: list[RowResult], steps: int) -> list[str]:
    body, failures = [], []
    for r in results:
        s = r.side
        if s is None:
            body.append([r.row.name, f"{r.row.learning_rate:g}", *["-"] * 8, "failed"])
            failures.append(f"  {r.row.name}: {r.error}")
            continue
        total = r.total_params or s.settings.get("total_params") or 0
        body.append([
            r.row.name, f"{r.row.learning_rate:g}", f"{s.trainable_params:,}",
            f"{100 * s.trainable_params / total:.2f}%" if total else "-", _size(r.saved_bytes),
            _loss(s.losses, 0), _loss(s.losses, -1), f"{s.tokens_per_second:,.0f}",
            f"{s.peak_memory_bytes / MIB:,.0f}", _size(r.weights_bytes), f"{s.other_cpu_cores:.2f}",
        ])
    header = ["method", "lr", "trainable", "of all", "saved", "loss@1", f"loss@{steps}", "tokens/s",
              "peak MiB", "weights", "busy"]
    return table(header, body) + (["failed:", *failures] if failures else [])


def weights_table(loads: list[dict]) -> list[str]:
    by = {w["load"]: w for w in loads}
    fp16 = by.get("fp16")
    body = []
    for w in loads:
        whole = w["footprint_bytes"] + w["quant_state_bytes"]
        ref_whole = fp16["footprint_bytes"] + fp16["quant_state_bytes"] if fp16 else 0
        linear = w["quantized_bytes"] + w["quant_state_bytes"]
        body.append([
            w["load"], w["layer_class"], f"{w['footprint_bytes'] / MIB:,.1f}", f"{w['quant_state_bytes'] / MIB:,.1f}",
            f"{w['quantized_bytes'] / MIB:,.1f}", f"{w['other_bytes'] / MIB:,.1f}",
            f"{w['footprint_bytes'] / fp16['footprint_bytes']:.3f}" if fp16 else "-",
            f"{whole / ref_whole:.3f}" if fp16 else "-",
            f"{linear / fp16['quantized_bytes']:.3f}" if fp16 else "-", f"{w['seconds']:.1f}",
        ])
    header = ["load", "linear layers", "footprint MiB", "+ quant consts", "linear MiB", "rest MiB",
              "footprint/fp16", "with consts/fp16", "linear/fp16", "load s"]
    return table(header, body, align="<<" + ">" * 8)


def memory_table(results: list[RowResult]) -> list[str]:
    body, failures = [], []
    for r in results:
        s = r.side
        if s is None:
            body.append([r.row.name, *["-"] * 7, "failed"])
            failures.append(f"  {r.row.name}: {r.error}")
            continue
        body.append([
            r.row.name, f"{r.weights_bytes / MIB:,.1f}", f"{r.memory_begin_bytes / MIB:,.0f}",
            f"{r.memory_peak_bytes / MIB:,.0f}", f"{(r.memory_peak_bytes - r.memory_begin_bytes) / MIB:,.0f}",
            f"{s.trainable_params:,}", f"{s.tokens_per_second:,.0f}", _loss(s.losses, -1),
            f"{s.other_cpu_cores:.2f}",
        ])
    header = ["run", "weights MiB", "at begin MiB", "peak MiB", "growth MiB", "trainable", "tokens/s", "last loss",
              "busy"]
    return table(header, body) + (["failed:", *failures] if failures else [])


def format_report(report: dict) -> str:
    info, s = report["machine"], report["settings"]
    lines = [
        "Fine-tuning methods: tunelab SFT, one fresh process per configuration",
        *machine_lines(info),
        f"date      {info['date']}; load average at start {report['load_average_at_start']:.2f}",
        f"command   {report['command']}",
    ]
    if "methods" in report:
        model = report["models"]["methods"]
        lines += [
            "", f"model     {model['name']}, {model['params']:,} parameters",
            f"training  alpaca_en_demo first {s['rows']} records, cutoff {s['cutoff_len']}, batch {s['batch_size']} x "
            f"{s['grad_accum']}, {s['steps']} steps (tokens/s from step {s['warmup'] + 1}), seed {s['seed']}, "
            f"{s['device']}, {'bf16' if s['bf16'] else 'fp32'}; loss on {LOSS_TOKENS}",
            "columns   saved: *.safetensors written as the model/adapter; peak MiB: "
            + ("CUDA max_memory_allocated" if s["device"] == "cuda" else
               f"RSS growth during training (MALLOC_MMAP_THRESHOLD_={s.get('malloc_mmap_threshold') or 'glibc'})")
            + "; weights: parameters + buffers + quantization constants being trained; busy: CPU cores used by "
              "other processes while timing",
            "", *method_table([to_row_result(r, Row(**r["row"])) for r in report["methods"]], s["steps"]),
        ]
    if "weights" in report:
        model = report["models"]["memory"]
        lines += ["", f"Base model weight memory after loading: {model['name']}, {model['params']:,} parameters",
                  "(8/4-bit: linear layers quantized by bitsandbytes, the rest in fp16; 4-bit is NF4 with double "
                  "quantization)", "", *weights_table(report["weights"])]
        by = {w["load"]: w for w in report["weights"]}
        if {"fp16", "4-bit", "8-bit"} <= set(by):
            whole = {k: by[k]["footprint_bytes"] + by[k]["quant_state_bytes"] for k in by}
            lines.append("ratio to fp16, whole model with quantization constants: "
                         f"8-bit {whole['8-bit'] / whole['fp16']:.3f}, 4-bit {whole['4-bit'] / whole['fp16']:.3f}; "
                         f"fp32 {whole['fp32'] / whole['fp16']:.3f}")
    if "memory" in report:
        m = report["memory_settings"]
        kind = "CUDA memory_allocated" if s["device"] == "cuda" else "anonymous RSS of the whole process"
        malloc = s.get("memory_malloc_mmap_threshold")
        lines += ["", f"LoRA vs QLoRA training ({m['steps']} steps, batch {m['batch_size']}, cutoff {m['cutoff_len']}, "
                      f"LoRA r8 on every linear layer; memory: {kind}, when training begins and peak during it"
                      + (f"; MALLOC_MMAP_THRESHOLD_={malloc}" if malloc else "") + ")", "",
                  *memory_table([to_row_result(r, Row(**r["row"])) for r in report["memory"]])]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(parser, DEFAULT_TOKENIZER)  # --model: the methods table's model
    parser.add_argument("--template", help="chat template for a --model without one (default, alpaca, chatml, ...)")
    add_run_args(parser, rows=100, steps=20, warmup=3, batch_size=4, lr=1e-4)  # --lr: every row but the two below
    parser.add_argument("--cutoff", type=int, default=256, help="max tokens per sample")
    parser.add_argument("--prompt-lr", type=float, default=1e-2, help="learning rate of prefix, ptuning, prompt")
    parser.add_argument("--ia3-lr", type=float, default=3e-3, help="learning rate of IA3")
    parser.add_argument("--virtual-tokens", type=int, default=16, help="prompt learning: virtual tokens")
    parser.add_argument("--only", help="comma list of method rows to run (default: all)")
    parser.add_argument("--skip-methods", action="store_true", help="only the memory part")
    parser.add_argument("--skip-memory", action="store_true", help="only the methods table")
    parser.add_argument("--memory-model", help="local model folder for the memory part; default: a random Qwen2 "
                                               "of --memory-hidden-size / --memory-layers")
    parser.add_argument("--memory-hidden-size", type=int, default=1024)
    parser.add_argument("--memory-layers", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--memory-batch-size", type=int, default=1)
    parser.add_argument("--memory-cutoff", type=int, default=128)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=4 * MIB,
                        help="CPU workers of the methods table: MALLOC_MMAP_THRESHOLD_ (bytes), so that freed large "
                             "tensors leave the resident set and peaks repeat; 0 leaves glibc's adaptive threshold")
    parser.add_argument("--memory-malloc-mmap-threshold", type=int, default=128 * KIB,
                        help="the same for the workers of the memory part")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every methods row")
    add_machine_args(parser)
    add_worker_args(parser, ("train", "weights"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    device = resolve_device(args.device)
    rows = method_rows(args.lr, args.prompt_lr, args.ia3_lr, args.virtual_tokens)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {r.name for r in rows})
        if unknown:
            raise SystemExit(f"--only: unknown rows {unknown}; rows: {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in wanted]
    info = machine_description(device, args.threads)
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        info["bitsandbytes"] = "not installed"
    report: dict[str, Any] = {
        "machine": info, "load_average_at_start": os.getloadavg()[0],
        "command": shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]]),
        "settings": {"rows": args.rows, "cutoff_len": args.cutoff, "batch_size": args.batch_size,
                     "grad_accum": args.grad_accum, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
                     "device": device, "bf16": args.bf16, "threads": args.threads,
                     "malloc_mmap_threshold": args.malloc_mmap_threshold if device == "cpu" else None,
                     "memory_malloc_mmap_threshold": args.memory_malloc_mmap_threshold if device == "cpu" else None},
        "models": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peft-methods-") as tmp:
        workdir = Path(tmp)
        if not args.skip_methods:
            model_path, model = prepare_model(args.model, workdir / "model", args.tokenizer, args.hidden_size,
                                              args.layers, args.seed)
            env = fixed_malloc_env(device, args.threads, args.malloc_mmap_threshold)
            results = run_rows(rows, model_path, args, "methods", workdir, env, rows=args.rows, cutoff_len=args.cutoff,
                               steps=args.steps, warmup=min(args.warmup, args.steps - 1), batch_size=args.batch_size,
                               grad_accum=args.grad_accum)
            if not model["params"]:
                model["params"] = next((r.total_params for r in results if r.side), 0)
            report["models"]["methods"] = model
            report["methods"] = [asdict(r) for r in results]
        if not args.skip_memory:
            model_path, model = prepare_model(args.memory_model, workdir / "memory-model", args.tokenizer,
                                              args.memory_hidden_size, args.memory_layers, args.seed)
            print("[memory] loading the base in fp32, fp16, bf16, 8-bit, 4-bit ...", file=sys.stderr, flush=True)
            env = fixed_malloc_env(device, args.threads, args.memory_malloc_mmap_threshold)
            loads = run_config("weights", "weights", {"model": model_path}, workdir, env, args.verbose)
            if isinstance(loads, dict):
                print(f"    failed: {loads['error']}", file=sys.stderr)
                loads = []
            if not model["params"]:
                fp32 = next((w for w in loads if w["load"] == "fp32"), None)
                model["params"] = fp32["footprint_bytes"] // 4 if fp32 else 0
            report["models"]["memory"] = model
            report["weights"] = loads
            sizes = {"rows": max(args.memory_steps * args.memory_batch_size * 2, 8), "cutoff_len": args.memory_cutoff,
                     "steps": args.memory_steps, "warmup": min(1, args.memory_steps - 1),
                     "batch_size": args.memory_batch_size, "grad_accum": 1}
            report["memory_settings"] = sizes
            memory_args = argparse.Namespace(**{**vars(args), "bf16": False})  # the rows set their own precision
            report["memory"] = [asdict(r) for r in run_rows(memory_rows(args.lr), model_path, memory_args, "memory",
                                                            workdir, env, **sizes)]
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        print(to_json(report))
    else:
        print(format_report(report))
        print(f"\nwall time {report['wall_seconds']:.0f} s; load average at end {report['load_average_at_end']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
