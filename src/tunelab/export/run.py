"""``tunelab export``: checks first, then merge, save (hf, bitsandbytes 4/8-bit, or GGUF with an optional Ollama
Modelfile) into a temporary folder beside ``export_dir``, and move it into place only when everything was
written, so a failure leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.console import console, human_size, stdout
from tunelab.errors import TunelabError
from tunelab.export.settings import ExportSettings
from tunelab.models.sources import adapter_base, is_reward_model, model_config, portable_base_name, resolve_model_path

RECORD = "export.json"  # what was exported from what; also marks a folder as an earlier export
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def check_adapter_base(model: str, adapter: str) -> None:
    """An adapter on another base than it was trained on: refused when both configs are at hand and differ."""
    recorded = adapter_base(adapter)
    if recorded is None or portable_base_name(recorded) == portable_base_name(model):
        return
    trained_on, given = model_config(recorded), model_config(model)
    if trained_on is None or given is None:
        return  # the recorded base is not here to compare with; loading the adapter checks the shapes
    differences = [f"{key} {trained_on.get(key)} vs {given.get(key)}" for key in _SHAPE_KEYS
                   if trained_on.get(key) != given.get(key)]
    if differences:
        raise TunelabError(f"adapter '{adapter}' was trained on '{recorded}', which differs from the model "
                           f"'{model}' ({', '.join(differences)}); pass --model {recorded} or leave --model out")


def check_target(settings: ExportSettings, base: str) -> Path:
    """export_dir must be new, empty, or (with export_overwrite) an earlier export; never the model or adapter."""
    target = Path(settings.export_dir)
    sources = [Path(resolve_model_path(base)), *([Path(settings.adapter_name_or_path)]
                                                  if settings.adapter_name_or_path else [])]
    if any(target.resolve() == source.resolve() for source in sources):
        raise TunelabError(f"export_dir '{target}' is the model or adapter folder being exported; choose a new folder")
    if target.is_file():
        raise TunelabError(f"export_dir '{target}' is a file; give a folder")
    if target.is_dir() and any(target.iterdir()):
        entries = sorted(p.name for p in target.iterdir())
        if not (target / RECORD).is_file():
            raise TunelabError(f"export_dir '{target}' holds other files ({', '.join(entries[:4])}"
                               f"{', ...' if len(entries) > 4 else ''}); choose a new or empty folder")
        if not settings.export_overwrite:
            raise TunelabError(f"export_dir '{target}' holds an earlier export; pass --overwrite "
                               "(export_overwrite: true) to replace it")
    return target


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _usage_hf(target: Path, quantized: bool, reward: bool) -> tuple[str, str]:
    """(command, Python) that use an exported model: a reward model scores, anything else chats."""
    folder = shlex.quote(str(target))
    extra = "  # needs bitsandbytes" if quantized else ""
    if reward:
        shell = f"tunelab score --model {folder} --prompt \"Write a story about Tim.\" --response \"Tim saw a frog.\""
        auto, head = "AutoModelForSequenceClassification", ", num_labels=1"
    else:
        shell, auto, head = f"tunelab chat --model {folder}", "AutoModelForCausalLM", ""
    return shell, (f"from transformers import {auto}, AutoTokenizer\n\n"
                   f"model = {auto}.from_pretrained({str(target)!r}{head}){extra}\n"
                   f"tokenizer = AutoTokenizer.from_pretrained({str(target)!r})")


def _usage_gguf(target: Path, file: str, ollama: bool) -> tuple[str, str]:
    lines = [f"llama-cli -m {shlex.quote(str(target / file))} -cnv"]
    if ollama:
        lines.append(f"ollama create {target.name} -f {shlex.quote(str(target / 'Modelfile'))} && ollama run "
                     f"{target.name}")
    return "\n".join(lines), ("from transformers import AutoModelForCausalLM\n\n"
                              f"model = AutoModelForCausalLM.from_pretrained({str(target)!r}, gguf_file={file!r})")


def run_export(settings: ExportSettings) -> Path:
    """Export as ``settings`` say; returns the folder written."""
    from tunelab.export.merge import check_mergeable
    from tunelab.inference.loading import check_inference_sources

    adapter = settings.adapter_name_or_path
    base = check_inference_sources(settings.model_name_or_path, adapter)
    if adapter is not None:
        check_mergeable(adapter, gguf=settings.export_format == "gguf")
        check_adapter_base(base, adapter)
    if settings.export_format == "gguf":  # what GGUF cannot hold is said before anything loads
        from tunelab.export.to_gguf import architecture_of

        if is_reward_model(base, adapter):
            raise TunelabError("GGUF export writes causal language models; a reward model (score head) exports "
                               "with --format hf")
        config = model_config(base)
        if config is not None:
            architecture_of(config)
    if settings.export_quantization_bit:
        from tunelab.models.sources import check_quantization_backend

        check_quantization_backend(settings.export_quantization_bit)
    target = check_target(settings, base)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        file, usage = _export_into(work, settings, base, target)
        (work / RECORD).write_text(json.dumps({
            "tunelab": __version__, "format": settings.export_format, "base_model": portable_base_name(base),
            "adapter": adapter, "dtype": settings.export_dtype, "gguf_type": settings.export_gguf_type
            if settings.export_format == "gguf" else None, "quantization_bit": settings.export_quantization_bit,
            "file": file}, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stdout.print(f"[bold green]exported[/bold green] {human_size(_size(target))} to {target}")
    stdout.print("use it\n  " + "\n\n".join(usage).replace("\n", "\n  "), markup=False, highlight=False)
    return target


def _export_into(work: Path, settings: ExportSettings, base: str, target: Path) -> tuple[str | None,
                                                                                        tuple[str, str]]:
    """Write the export into ``work``; returns the GGUF file name (None for hf) and how to use the result."""
    from tunelab.export.merge import load_merged, quantize_saved, save_hf, write_card

    adapter = settings.adapter_name_or_path
    gguf = settings.export_format == "gguf"
    what = f"{base}" + (f" + {adapter}" if adapter else "")
    with console.status(f"loading {what} ..."):
        # the GGUF's source in the base's own precision (f32 when asked for f32), as llama.cpp's converter reads it
        dtype = ("float32" if settings.export_gguf_type == "f32" else "auto") if gguf else settings.export_dtype
        tokenizer, model = load_merged(settings, base, dtype)
    console.print(f"[bold]export[/bold] {'merged' if adapter else 'loaded'} {what}")
    hf_folder = work / "hf" if gguf or settings.export_quantization_bit else work
    with console.status("saving the model ..."):
        save_hf(model, tokenizer, hf_folder, settings, base)
    del model
    if settings.export_quantization_bit:
        with console.status(f"quantizing to {settings.export_quantization_bit} bits (bitsandbytes) ..."):
            quantize_saved(hf_folder, settings.export_quantization_bit, work, is_reward_model(base, adapter))
        shutil.rmtree(hf_folder)
    if not gguf:
        kind = f"A {settings.export_quantization_bit}-bit model" if settings.export_quantization_bit else "A model"
        usage = _usage_hf(target, bool(settings.export_quantization_bit), is_reward_model(base, adapter))
        write_card(work, target.name, settings, base, kind, usage)
        return None, usage
    file = _write_gguf(work, hf_folder, settings, base, target, tokenizer)
    return file, _usage_gguf(target, file, settings.export_ollama)


def _write_gguf(work: Path, hf_folder: Path, settings: ExportSettings, base: str, target: Path,
                tokenizer: Any) -> str:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tunelab.export.merge import write_card
    from tunelab.export.ollama import write_modelfile
    from tunelab.export.to_gguf import write_gguf

    name = target.name
    file = f"{name}-{settings.export_gguf_type}.gguf"
    usage = _usage_gguf(target, file, settings.export_ollama)
    card = f"GGUF ({settings.export_gguf_type})"
    write_card(hf_folder, target.name, settings, base, card, usage)  # the GGUF's base model and tags come from the card
    columns = (TextColumn(f"writing {file}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("gguf", total=None)
        summary = write_gguf(hf_folder, work / file, settings.export_gguf_type, name, tokenizer,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    types = ", ".join(f"{count} {kind}" for kind, count in sorted(summary["types"].items()))
    console.print(f"[bold]export[/bold] {summary['architecture']} GGUF, {summary['tokenizer']} tokenizer, "
                  f"{summary['tensors']} tensors ({types})")
    if settings.export_ollama:
        write_modelfile(work, file, getattr(tokenizer, "chat_template", None), tokenizer.eos_token)
    shutil.rmtree(hf_folder)
    write_card(work, target.name, settings, base, card, usage)
    return file
