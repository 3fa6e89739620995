"""The command line: train, config, data inspect, chat, predict, demo.

Every command turns a TunelabError into one red line and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from tunelab.console import console
from tunelab.errors import TunelabError

app = typer.Typer(help="tunelab: fine-tune large language models end to end.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Look at datasets before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _quiet_libraries() -> None:
    """Deprecation chatter from the libraries underneath says nothing a tunelab user can act on."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the per-load 'Loading weights' bar; training bars stay


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return command(*args, **kwargs)
        except TunelabError as error:
            console.print(f"[bold red]error:[/bold red] {error}", soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def _keys_epilog() -> str:
    from tunelab.config import describe_keys

    return "Config keys (YAML or key=value):\n\n" + "\n\n".join(
        f"{name} ({kind}, default {default}): {help_text}" for name, kind, default, help_text in describe_keys()
    )


@app.command(epilog=_keys_epilog())
@_friendly_errors
def train(
    config: Annotated[str, typer.Argument(help="YAML config file (see examples/).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings that win over the file.")]
    = None,
) -> None:
    """Train: stage sft (supervised) or pt (continued pretraining), with lora, full or freeze tuning."""
    from tunelab.config import load_config

    cfg = load_config(config, overrides or [])
    if not cfg.do_train:
        raise TunelabError("do_train is false: `tunelab train` only trains; use `tunelab predict` to generate")
    from tunelab.stages.sft import run_sft

    run_sft(cfg)


@app.command("config")
def config_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """List every config key with its type, default and help."""
    from rich.table import Table

    from tunelab.config import describe_keys

    rows = describe_keys()
    if as_json:
        print(json.dumps([dict(zip(("key", "type", "default", "help"), row, strict=True)) for row in rows],
                         indent=2))
        return
    table = Table("key", "type", "default", "help")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@data_app.command("inspect")
@_friendly_errors
def data_inspect(
    dataset: Annotated[str, typer.Argument(help="Registry name (dataset_info.json) or file path.")],
    dataset_dir: Annotated[str, typer.Option(help="Folder with dataset_info.json.")] = "data",
    model: Annotated[str, typer.Option(help="Model or tokenizer folder for tokens and template.")]
    = "stories260K",
    template: Annotated[str | None, typer.Option(help="Chat template (default: the tokenizer's own).")] = None,
    stage: Annotated[str, typer.Option(help="sft, pt, rm, dpo, orpo, kto, ppo or grpo: which rows to build.")]
    = "sft",
    cutoff_len: Annotated[int, typer.Option(help="Count samples longer than this.")] = 2048,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Records to render.")] = 2,
    train_on_prompt: Annotated[bool, typer.Option(help="Show the mask for train_on_prompt.")] = False,
    mask_history: Annotated[bool, typer.Option(help="Show the mask for mask_history.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Skip and count unusable records instead of stopping.")]
    = False,
    encoding: Annotated[str | None, typer.Option(help="Text encoding (default: detected).")] = None,
    plot_dir: Annotated[str, typer.Option(help="Where the token-length histogram PNG goes.")]
    = "outputs/inspect",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a dataset's format, size, skipped records, token lengths and trained/untrained segments."""
    from tunelab.data.formats import STAGE_KINDS
    from tunelab.data.inspect import inspect_dataset, print_inspection

    if stage not in STAGE_KINDS:
        raise TunelabError(f"--stage '{stage}' is not one of {', '.join(STAGE_KINDS)}")
    policy = "all" if train_on_prompt else "last" if mask_history else "assistant"
    result = inspect_dataset(dataset, dataset_dir=dataset_dir, model=model, template=template, stage=stage,
                             cutoff_len=cutoff_len, num_samples=num_samples, policy=policy,
                             skip_invalid=skip_invalid, encoding=encoding, plot_dir=plot_dir)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_inspection(result)


@data_app.command("convert")
@_friendly_errors
def data_convert(
    source: Annotated[str, typer.Argument(help="Registry name, file, folder or hub id to convert.")],
    output: Annotated[str, typer.Argument(help="Output file (.jsonl).")],
    to: Annotated[str, typer.Option("--to", help="Output format.")] = "jsonl",
    dataset_dir: Annotated[str, typer.Option(help="Folder with dataset_info.json.")] = "data",
    stage: Annotated[str, typer.Option(help="Which canonical rows: sft, pt, dpo, kto, grpo, ...")] = "sft",
    skip_invalid: Annotated[bool, typer.Option(help="Skip and count unusable records instead of stopping.")]
    = False,
    encoding: Annotated[str | None, typer.Option(help="Text encoding (default: detected).")] = None,
) -> None:
    """Write a dataset's canonical rows (TRL's standard types) as JSON Lines, streaming."""
    from tunelab.data.convert import convert_dataset

    if to != "jsonl":
        raise TunelabError(f"--to '{to}' is not supported; only jsonl")
    convert_dataset(source, output, dataset_dir=dataset_dir, stage=stage, skip_invalid=skip_invalid,
                    encoding=encoding)


@app.command()
@_friendly_errors
def chat(
    model: Annotated[str, typer.Option(help="Model id or folder.")] = "stories260K",
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter folder (e.g. a training output_dir).")]
    = None,
    template: Annotated[str | None, typer.Option(help="Chat template (default: the saved one).")] = None,
    query: Annotated[str | None, typer.Option(help="One-shot: answer this and exit.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Chat with a model (streaming, history, /clear, /exit), or answer one --query."""
    from tunelab.inference.chat import run_chat
    from tunelab.inference.predictor import Predictor

    predictor = Predictor(model, adapter=adapter, template=template, max_new_tokens=max_new_tokens,
                          temperature=temperature)
    run_chat(predictor, query=query, system=system)


@app.command()
@_friendly_errors
def predict(
    dataset: Annotated[str, typer.Argument(help="Registry name or file path of the prompts.")],
    output: Annotated[str, typer.Option(help="JSONL file to write.")] = "predictions.jsonl",
    dataset_dir: Annotated[str, typer.Option(help="Folder with dataset_info.json.")] = "data",
    model: Annotated[str, typer.Option(help="Model id or folder.")] = "stories260K",
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter folder.")] = None,
    template: Annotated[str | None, typer.Option(help="Chat template (default: the saved one).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    max_samples: Annotated[int | None, typer.Option(help="Use at most this many records.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Generate for every prompt of a dataset and write JSONL (prompt, prediction, reference)."""
    from tunelab.inference.predict import run_predict
    from tunelab.inference.predictor import Predictor

    predictor = Predictor(model, adapter=adapter, template=template, max_new_tokens=max_new_tokens,
                          temperature=temperature)
    run_predict(predictor, dataset, dataset_dir=dataset_dir, output=output, batch_size=batch_size,
                max_samples=max_samples)


@app.command()
@_friendly_errors
def demo(
    output_dir: Annotated[str, typer.Option(help="Where the demo run goes.")] = "outputs/demo",
) -> None:
    """Offline CPU demo: LoRA SFT of the embedded model, with a before/after score on held-out prompts."""
    from tunelab.demo.run import run_demo

    run_demo(output_dir)
