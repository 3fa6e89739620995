"""The command line: train, config, data inspect/convert, rewards list/score, rag index/query, chat, predict, eval,
export, score, serve, webui, demo.

Every command turns a TunelabError into one red line and exit code 2, and Ctrl-C into exit code 130,
never a traceback. Heavy libraries are imported inside the commands, after the cheap checks, so
`--help` and config mistakes answer at once.
"""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from tunelab import __version__, signals
from tunelab.commands.config import keys_epilog
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.inference.rag.retriever import DEFAULT_MAX_DISTANCE, DEFAULT_TEMPLATE, DEFAULT_TOP_K
from tunelab.inference.rag.store import DEFAULT_COLLECTION
from tunelab.quiet import quiet_libraries

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="tunelab: fine-tune large language models end to end.", no_args_is_help=True,
                  pretty_exceptions_enable=False, context_settings=CONTEXT)
data_app = typer.Typer(help="Look at datasets before training.", no_args_is_help=True, context_settings=CONTEXT)
app.add_typer(data_app, name="data")
rewards_app = typer.Typer(help="The reward functions of the RL stages: list them, try them on your own answers.",
                          no_args_is_help=True, context_settings=CONTEXT)
app.add_typer(rewards_app, name="rewards")
rag_app = typer.Typer(help="Answer from your own documents: index them into chromadb, look up what a question finds; "
                           "then --rag-db on chat, predict, eval and serve.", no_args_is_help=True,
                      context_settings=CONTEXT)
app.add_typer(rag_app, name="rag")


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            with signals.handling_sigterm():
                return command(*args, **kwargs)
        except TunelabError as error:
            console.print(f"[bold red]error:[/bold red] {error}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]terminated[/yellow]" if signals.STOP.requested.is_set()
                          else "[yellow]interrupted[/yellow]")
            raise typer.Exit(signals.STOP.exit_code) from None
    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """tunelab: fine-tune large language models end to end."""


def _stage_option_help() -> str:
    from tunelab.data.row_kinds import ROW_KINDS
    from tunelab.stage_registry import stage_names

    return f"Stage ({', '.join(stage_names())}) or row kind ({', '.join(ROW_KINDS)}): which rows to build."


@app.command(epilog=keys_epilog(), context_settings={**CONTEXT, "ignore_unknown_options": True,
                                                      "allow_extra_args": True})
@_friendly_errors
def train(
    config: Annotated[str, typer.Argument(help="YAML config file (see examples/).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value (or --key value) settings that win over the file.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check config, data, tokenizer and template; report "
                                          "tokens, steps and a memory estimate; train nothing, write nothing.")]
    = False,
) -> None:
    """Train any stage (see the list below: sft, pt, preference stages, ...) with lora, full or freeze tuning."""
    from tunelab.commands.train import train_command

    command = " ".join(shlex.quote(arg) for arg in ["tunelab", *sys.argv[1:]])
    interrupted = train_command(config, overrides or [], dry_run, command)
    if interrupted or signals.STOP.requested.is_set():  # a SIGTERM during the final save: still 143
        raise typer.Exit(signals.STOP.exit_code)


@app.command("config")
def config_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """List the stages and every config key with its type, default, help (and stages, for a stage's own keys)."""
    from tunelab.commands.config import print_keys

    print_keys(as_json)


# --- options shared by the commands that load a model to generate ----------------------------------

ModelOption = Annotated[str | None, typer.Option(
    "--model", help="Model id or folder (default: the adapter's base model, else the embedded stories260K).")]
AdapterOption = Annotated[str | None, typer.Option("--adapter", help="PEFT adapter folder (a training output_dir).")]
TemplateOption = Annotated[str | None, typer.Option("--template", help="Chat template (default: the saved one).")]
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate per answer.")]
TemperatureOption = Annotated[float, typer.Option("--temperature", help="0 = greedy; above 0 samples.")]
TopPOption = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with temperature > 0).")]
MaxThinkingOption = Annotated[int | None, typer.Option(
    "--max-thinking-tokens", help="Budget forcing: close a reasoning model's <think> section after this many tokens.")]
MinThinkingOption = Annotated[int, typer.Option(
    "--min-thinking-tokens", help="Budget forcing: an earlier close of <think> becomes --wait-text.")]
NumWaitOption = Annotated[int, typer.Option(
    "--num-wait", help="Budget forcing: replace this many closes of <think> with --wait-text (s1).")]
WaitTextOption = Annotated[str, typer.Option("--wait-text", help="What replaces a suppressed close of <think>.")]
MaxAnswerOption = Annotated[int | None, typer.Option(
    "--max-answer-tokens", help="Budget forcing: tokens of the answer after </think>.")]
TrustRemoteCodeOption = Annotated[bool, typer.Option("--trust-remote-code",
                                                     help="Allow model code from the hub (ChatGLM, ...).")]
RevisionOption = Annotated[str, typer.Option("--revision", help="Branch, tag or commit of a hub model.")]
AttnOption = Annotated[str, typer.Option("--attn", help="Attention implementation: auto, sdpa, fa2, eager.")]
RagDbOption = Annotated[str | None, typer.Option(
    "--rag-db", help="RAG: a `tunelab rag index` folder; its chunks close to each question go into the prompt.")]
RagCollectionOption = Annotated[str, typer.Option("--rag-collection", help="RAG: the collection in --rag-db.")]
RagTopKOption = Annotated[int, typer.Option("--rag-top-k", help="RAG: at most this many chunks per question.")]
RagMaxDistanceOption = Annotated[float, typer.Option(
    "--rag-max-distance", help="RAG: only chunks within this cosine distance (0-2; 2 keeps all).")]
RagTemplateOption = Annotated[str, typer.Option(
    "--rag-template", help="RAG: the question with its clues; {context} and {question} (\\n: a line break).")]
DatasetDirOption = Annotated[str, typer.Option(
    "--dataset-dir", help="Folder with dataset_info.json (default: ./data).")]
SkipInvalidOption = Annotated[bool, typer.Option(
    "--skip-invalid", help="Skip and count unusable records instead of stopping.")]
SKIP_HINT = "pass --skip-invalid to skip and count such records"


def _model_flags(model: str | None, adapter: str | None, template: str | None, trust_remote_code: bool = False,
                 revision: str = "main", attn: str = "auto") -> Any:
    from tunelab.commands.flags import ModelFlags

    return ModelFlags(model, adapter, template, trust_remote_code, revision, attn)


def _rag(db: str | None, collection: str, top_k: int, max_distance: float, template: str) -> Any:
    from tunelab.commands.flags import RagFlags

    return RagFlags(db, collection, top_k, max_distance, template)


def _sampling(max_new_tokens: int, temperature: float, top_p: float, max_thinking_tokens: int | None = None,
              min_thinking_tokens: int = 0, num_wait: int = 0, wait_text: str = "Wait",
              max_answer_tokens: int | None = None) -> Any:
    from tunelab.commands.flags import SamplingFlags

    return SamplingFlags(max_new_tokens, temperature, top_p, max_thinking_tokens, min_thinking_tokens, num_wait,
                         wait_text, max_answer_tokens)




@data_app.command("inspect")
@_friendly_errors
def data_inspect(
    dataset: Annotated[str, typer.Argument(help="Registry name (dataset_info.json) or file path.")],
    dataset_dir: DatasetDirOption = "data",
    model: Annotated[str, typer.Option(help="Model or tokenizer folder for tokens and template.")]
    = "stories260K",
    template: Annotated[str | None, typer.Option(help="Chat template (default: the tokenizer's own).")] = None,
    stage: Annotated[str, typer.Option(help=_stage_option_help())] = "sft",
    cutoff_len: Annotated[int, typer.Option(help="Count samples longer than this.")] = 2048,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Records to render.")] = 2,
    train_on_prompt: Annotated[bool, typer.Option(help="Show the mask for train_on_prompt.")] = False,
    mask_history: Annotated[bool, typer.Option(help="Show the mask for mask_history.")] = False,
    skip_invalid: SkipInvalidOption = False,
    encoding: Annotated[str | None, typer.Option(help="Text encoding (default: detected).")] = None,
    plot_dir: Annotated[str, typer.Option(help="Where the token-length histogram PNG goes.")]
    = "outputs/inspect",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a dataset's format, size, skipped records, token lengths and trained/untrained segments."""
    from tunelab.commands.inspect import inspect_command

    inspect_command(dataset, dataset_dir=dataset_dir, model=model, template=template, stage=stage,
                    cutoff_len=cutoff_len, num_samples=num_samples, train_on_prompt=train_on_prompt,
                    mask_history=mask_history, skip_invalid=skip_invalid, encoding=encoding, plot_dir=plot_dir,
                    skip_hint=SKIP_HINT, as_json=as_json)


@data_app.command("convert")
@_friendly_errors
def data_convert(
    source: Annotated[str, typer.Argument(help="Registry name, file, folder or hub id to convert.")],
    output: Annotated[str, typer.Argument(help="Output file (.jsonl).")],
    to: Annotated[str, typer.Option("--to", help="Output format.")] = "jsonl",
    dataset_dir: DatasetDirOption = "data",
    stage: Annotated[str, typer.Option(help=_stage_option_help())] = "sft",
    skip_invalid: SkipInvalidOption = False,
    encoding: Annotated[str | None, typer.Option(help="Text encoding (default: detected).")] = None,
) -> None:
    """Write a dataset's canonical rows (TRL's standard types) as JSON Lines, streaming."""
    from tunelab.commands.convert import convert_command

    convert_command(source, output, to=to, dataset_dir=dataset_dir, stage=stage, skip_invalid=skip_invalid,
                    encoding=encoding, skip_hint=SKIP_HINT)


@rewards_app.command("list")
@_friendly_errors
def rewards_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {name, summary}.")] = False,
) -> None:
    """Every built-in reward function with what it scores."""
    from tunelab.commands.rewards import print_reward_list

    print_reward_list(as_json)


@rewards_app.command("score")
@_friendly_errors
def rewards_score(
    file: Annotated[str, typer.Argument(help="JSONL (or JSON/CSV/Parquet) rows with a `completion` (text or "
                                             "messages), an optional `prompt` and the columns the rewards read.")],
    reward_funcs: Annotated[str, typer.Option("--reward-funcs", help="Comma-separated reward functions: built-in "
                                              "names (`tunelab rewards list`) or path/to/file.py:function.")] = "",
    reward_weights: Annotated[str | None, typer.Option("--reward-weights", help="Comma-separated weights, one per "
                                                       "function (default 1 each).")] = None,
    reward_model: Annotated[str | None, typer.Option("--reward-model", help="Folder of a stage-rm model; its "
                                                     "score is added as `reward_model`.")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="A reward setting as key=value, e.g. "
                                                       "length_target_chars=400 (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row: {rewards: {name: value}, "
                                          "total}.")] = False,
) -> None:
    """Score hand-written completions with reward functions, as an RL run would, before a long run."""
    from tunelab.commands.rewards import print_scores, reward_settings, score_file

    print_scores(score_file(file, reward_settings(reward_funcs, reward_weights, reward_model, settings or [])),
                 as_json)


@rag_app.command("index")
@_friendly_errors
def rag_index(
    docs: Annotated[list[str] | None, typer.Argument(help="Files and folders: .txt, .md, and the --field of "
                                                          ".json/.jsonl/.csv/.tsv/.parquet records.")] = None,
    db: Annotated[str, typer.Option("--db", help="Folder of the chromadb index (created if new).")] = "rag_db",
    collection: Annotated[str, typer.Option("--collection", help="Collection in --db.")] = DEFAULT_COLLECTION,
    embedding_model: Annotated[str | None, typer.Option(
        "--embedding-model", help="Local sentence-embedding folder (default: the bundled all-MiniLM-L6-v2, "
                                  "English); questions are embedded by the same one.")] = None,
    chunk_size: Annotated[int | None, typer.Option(
        "--chunk-size", help="Tokens of the embedding model per chunk (default and most: what it reads).")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(
        "--chunk-overlap", help="Tokens a chunk repeats from the one before (default 32).")] = None,
    field: Annotated[list[str] | None, typer.Option(
        "--field", help="Record field holding the text (repeat to join several; default: text or content).")]
    = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding (default: detected).")] = None,
    skip_invalid: SkipInvalidOption = False,
) -> None:
    """Index documents into a persistent chromadb collection; unchanged files are skipped, changed ones replaced."""
    from tunelab.commands.rag import index_command

    index_command(docs or [], db, collection=collection, embedding_model=embedding_model, chunk_size=chunk_size,
                  chunk_overlap=chunk_overlap, fields=field or [], encoding=encoding, skip_invalid=skip_invalid)


@rag_app.command("query")
@_friendly_errors
def rag_query(
    questions: Annotated[list[str] | None, typer.Argument(help="Questions to look up.")] = None,
    db: Annotated[str, typer.Option("--db", help="Folder of the index (`tunelab rag index`).")] = "rag_db",
    questions_file: Annotated[str | None, typer.Option(
        "--questions", help="Data file (JSONL, JSON, CSV, ...) with more questions.")] = None,
    question_field: Annotated[str, typer.Option("--question-field", help="Field of --questions records.")]
    = "question",
    collection: Annotated[str, typer.Option("--collection", help="Collection in --db.")] = DEFAULT_COLLECTION,
    top_k: Annotated[int, typer.Option("--top-k", help="Chunks per question.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per question: {question, results: "
                                          "[{text, source, record, chunk, distance}]}.")] = False,
) -> None:
    """Show the chunks nearest to each question, with distance, file, record and chunk."""
    from tunelab.commands.rag import query_command

    query_command(db, questions or [], questions_file=questions_file, question_field=question_field,
                  collection=collection, top_k=top_k, as_json=as_json)


@app.command()
@_friendly_errors
def chat(
    model: ModelOption = None,
    adapter: AdapterOption = None,
    template: TemplateOption = None,
    query: Annotated[str | None, typer.Option(help="One-shot: answer this and exit.")] = None,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="With --query: an image it asks about (repeatable; a vision-language model). In the chat "
                        "loop, /image PATH attaches one.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: MaxNewTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    max_thinking_tokens: MaxThinkingOption = None,
    min_thinking_tokens: MinThinkingOption = 0,
    num_wait: NumWaitOption = 0,
    wait_text: WaitTextOption = "Wait",
    max_answer_tokens: MaxAnswerOption = None,
    rag_db: RagDbOption = None,
    rag_collection: RagCollectionOption = DEFAULT_COLLECTION,
    rag_top_k: RagTopKOption = DEFAULT_TOP_K,
    rag_max_distance: RagMaxDistanceOption = DEFAULT_MAX_DISTANCE,
    rag_template: RagTemplateOption = DEFAULT_TEMPLATE,
    trust_remote_code: TrustRemoteCodeOption = False,
    revision: RevisionOption = "main",
    attn: AttnOption = "auto",
) -> None:
    """Chat with a model (streaming, history, /clear, /exit), or answer one --query."""
    from tunelab.commands.chat import chat_command

    sampling = _sampling(max_new_tokens, temperature, top_p, max_thinking_tokens, min_thinking_tokens, num_wait,
                         wait_text, max_answer_tokens)
    chat_command(_model_flags(model, adapter, template, trust_remote_code, revision, attn), sampling, query, system,
                 _rag(rag_db, rag_collection, rag_top_k, rag_max_distance, rag_template), images=image or [])


@app.command()
@_friendly_errors
def predict(
    dataset: Annotated[str, typer.Argument(help="Registry name or file path of the prompts.")],
    output: Annotated[str, typer.Option(help="JSONL file to write.")] = "predictions.jsonl",
    dataset_dir: DatasetDirOption = "data",
    model: ModelOption = None,
    adapter: AdapterOption = None,
    template: TemplateOption = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    max_samples: Annotated[int | None, typer.Option(help="Use at most this many records.")] = None,
    skip_invalid: SkipInvalidOption = False,
    max_new_tokens: MaxNewTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    max_thinking_tokens: MaxThinkingOption = None,
    min_thinking_tokens: MinThinkingOption = 0,
    num_wait: NumWaitOption = 0,
    wait_text: WaitTextOption = "Wait",
    max_answer_tokens: MaxAnswerOption = None,
    rag_db: RagDbOption = None,
    rag_collection: RagCollectionOption = DEFAULT_COLLECTION,
    rag_top_k: RagTopKOption = DEFAULT_TOP_K,
    rag_max_distance: RagMaxDistanceOption = DEFAULT_MAX_DISTANCE,
    rag_template: RagTemplateOption = DEFAULT_TEMPLATE,
    trust_remote_code: TrustRemoteCodeOption = False,
    revision: RevisionOption = "main",
    attn: AttnOption = "auto",
) -> None:
    """Generate for every prompt of a dataset and write JSONL (prompt, prediction, reference)."""
    from tunelab.commands.predict import predict_command

    sampling = _sampling(max_new_tokens, temperature, top_p, max_thinking_tokens, min_thinking_tokens, num_wait,
                         wait_text, max_answer_tokens)
    predict_command(dataset, output, dataset_dir, _model_flags(model, adapter, template, trust_remote_code, revision,
                                                               attn),
                    sampling, batch_size=batch_size, max_samples=max_samples,
                    skip_invalid=skip_invalid, skip_hint=SKIP_HINT,
                    rag=_rag(rag_db, rag_collection, rag_top_k, rag_max_distance, rag_template))


@app.command("eval")
@_friendly_errors
def evaluate(
    dataset: Annotated[str | None, typer.Argument(help="Registry name or file of the evaluation data (prompts "
                                                       "with reference answers).")] = None,
    predictions: Annotated[list[str] | None, typer.Option(
        "--predictions", help="Score a JSONL of {prediction, reference} rows (from `tunelab predict`) instead of "
                              "generating; repeat to compare several.")] = None,
    dataset_dir: DatasetDirOption = "data",
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Model id or folder (repeat to compare models; default: the adapter's base, else the "
                        "embedded stories260K).")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="Adapter or run folder; repeat to compare several on one base model.")] = None,
    with_base: Annotated[bool, typer.Option("--with-base", help="Also evaluate the base model without adapter, "
                                            "as the first column.")] = False,
    template: TemplateOption = None,
    metrics: Annotated[str, typer.Option(
        "--metrics", help="Comma-separated: bleu-1..bleu-4, rouge-1..rouge-4, rouge-l, meteor, ter, chrf, "
                          "exact_match, accuracy, perplexity; groups bleu, rouge, text, all. Default: the text "
                          "metrics, plus accuracy when the references are GSM8K solutions or choice letters.")]
    = "auto",
    task: Annotated[str, typer.Option("--task", help="Accuracy task: auto, gsm8k, math (math-verify), choice "
                                      "(multiple-choice letters).")] = "auto",
    language: Annotated[str, typer.Option("--language", help="auto, en or zh (jieba words, character BLEU).")]
    = "auto",
    output_dir: Annotated[str, typer.Option("--output-dir", help="Where eval_results.json, the per-sample JSONL "
                                            "and the comparison chart go.")] = "outputs/eval",
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_samples: Annotated[int | None, typer.Option(help="Use at most this many records.")] = None,
    skip_invalid: SkipInvalidOption = False,
    max_new_tokens: MaxNewTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    max_thinking_tokens: MaxThinkingOption = None,
    min_thinking_tokens: MinThinkingOption = 0,
    num_wait: NumWaitOption = 0,
    wait_text: WaitTextOption = "Wait",
    max_answer_tokens: MaxAnswerOption = None,
    rag_db: RagDbOption = None,
    rag_collection: RagCollectionOption = DEFAULT_COLLECTION,
    rag_top_k: RagTopKOption = DEFAULT_TOP_K,
    rag_max_distance: RagMaxDistanceOption = DEFAULT_MAX_DISTANCE,
    rag_template: RagTemplateOption = DEFAULT_TEMPLATE,
    cutoff_len: Annotated[int, typer.Option(help="Perplexity: tokens per conversation, as in training.")] = 2048,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object.")] = False,
    trust_remote_code: TrustRemoteCodeOption = False,
    revision: RevisionOption = "main",
    attn: AttnOption = "auto",
) -> None:
    """Score generations: BLEU, ROUGE, METEOR, TER, chrF, exact match, task accuracy, perplexity; several
    models or adapters give one comparison table and chart."""
    from tunelab.commands.evaluate import eval_command

    sampling = _sampling(max_new_tokens, temperature, top_p, max_thinking_tokens, min_thinking_tokens, num_wait,
                         wait_text, max_answer_tokens)
    eval_command(dataset, predictions or [], models=model or [], adapters=adapter or [], with_base=with_base,
                 flags=_model_flags(None, None, template, trust_remote_code, revision, attn),
                 sampling=sampling, dataset_dir=dataset_dir, metrics=metrics,
                 task=task, language=language, output_dir=output_dir, batch_size=batch_size, max_samples=max_samples,
                 cutoff_len=cutoff_len, skip_invalid=skip_invalid, skip_hint=SKIP_HINT, as_json=as_json,
                 rag=_rag(rag_db, rag_collection, rag_top_k, rag_max_distance, rag_template))


@app.command("export")
@_friendly_errors
def export(
    config: Annotated[str | None, typer.Argument(help="YAML with LLaMA-Factory's export keys (model_name_or_path, "
                                                      "adapter_name_or_path, export_dir, export_size, ...).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Base model, or a full/freeze run folder (default: "
                                              "the adapter's base).")] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="Adapter (run folder) to merge.")] = None,
    output: Annotated[str | None, typer.Option("--output", "--export-dir", help="Output folder.")] = None,
    export_format: Annotated[str | None, typer.Option("--format", help="hf (safetensors, default) or gguf.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="hf weights: auto (the base's), float32, float16, "
                                              "bfloat16.")] = None,
    quantization: Annotated[str | None, typer.Option(
        "--quantization", help="gguf: f32, f16 (default), bf16, q8_0, q5_1, q5_0, q4_1, q4_0; hf: 4 or 8 "
                               "(bitsandbytes).")] = None,
    template: TemplateOption = None,
    shard_size: Annotated[float | None, typer.Option("--shard-size", help="Largest safetensors shard in GB.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or auto (a GPU if any) for the merge.")] = None,
    legacy_format: Annotated[bool | None, typer.Option("--legacy-format/--safetensors",
                                                       help="Save .bin files instead of safetensors.")] = None,
    ollama: Annotated[bool | None, typer.Option("--ollama", help="gguf: also write an Ollama Modelfile.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an earlier export in the output "
                                                   "folder.")] = None,
    trust_remote_code: Annotated[bool | None, typer.Option("--trust-remote-code", help="Allow model code from the "
                                                           "hub.")] = None,
) -> None:
    """Export a model: the adapter merged into its base (safetensors, or 4/8-bit), or GGUF for llama.cpp/Ollama."""
    from tunelab.commands.export import export_settings
    from tunelab.export.run import run_export

    run_export(export_settings(config, export_format, quantization, {
        "model_name_or_path": model, "adapter_name_or_path": adapter, "export_dir": output, "export_dtype": dtype,
        "template": template, "export_size": shard_size, "export_device": device,
        "export_legacy_format": legacy_format, "export_ollama": ollama, "export_overwrite": overwrite,
        "trust_remote_code": trust_remote_code}))


@app.command()
@_friendly_errors
def score(
    dataset: Annotated[str | None, typer.Argument(help="Preference dataset to score (chosen vs rejected).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Score one response to this prompt.")] = None,
    response: Annotated[str | None, typer.Option(help="The response to --prompt.")] = None,
    model: ModelOption = None,
    adapter: AdapterOption = None,
    template: TemplateOption = None,
    dataset_dir: DatasetDirOption = "data",
    max_samples: Annotated[int | None, typer.Option(help="Use at most this many pairs.")] = None,
    skip_invalid: SkipInvalidOption = False,
    output: Annotated[str | None, typer.Option(help="JSONL file for per-pair scores.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    trust_remote_code: TrustRemoteCodeOption = False,
    revision: RevisionOption = "main",
    attn: AttnOption = "auto",
) -> None:
    """Score (prompt, response) with a reward model from stage rm; on a preference dataset, its pair accuracy."""
    from tunelab.commands.score import score_command

    score_command(dataset, prompt, response, _model_flags(model, adapter, template, trust_remote_code, revision, attn),
                  dataset_dir=dataset_dir, max_samples=max_samples, skip_invalid=skip_invalid, output=output,
                  as_json=as_json)


@app.command()
@_friendly_errors
def serve(
    config: Annotated[str | None, typer.Argument(help="YAML file with the same keys (LLaMA-Factory's "
                                                      "model_name_or_path, adapter_name_or_path, infer_backend too).")]
    = None,
    model: ModelOption = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="[NAME=]PATH of an adapter, repeatable: each is a model of its own, chosen by the "
                          "request's `model`.")] = None,
    template: TemplateOption = None,
    engine: Annotated[str | None, typer.Option("--engine", help="hf (default; CPU or GPU) or vllm (GPU).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1, this machine only).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000, or API_PORT).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require `Authorization: Bearer KEY` (default: "
                                                "TUNELAB_API_KEY or API_KEY).")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="Name of the base model in /v1/models.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Requests generated together (default 32).")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Waiting requests before 429 (default 256).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No line per request.")] = False,
    rag_db: RagDbOption = None,
    rag_collection: Annotated[str | None, typer.Option("--rag-collection", help="RAG: the collection in "
                                                       "--rag-db.")] = None,
    rag_top_k: Annotated[int | None, typer.Option("--rag-top-k", help="RAG: at most this many chunks per "
                                                  f"question (default {DEFAULT_TOP_K}).")] = None,
    rag_max_distance: Annotated[float | None, typer.Option(
        "--rag-max-distance", help="RAG: only chunks within this cosine distance (default "
                                   f"{DEFAULT_MAX_DISTANCE}).")] = None,
    rag_template: Annotated[str | None, typer.Option("--rag-template", help="RAG: the question with its clues.")]
    = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit of a hub model.")]
    = None,
    attn: Annotated[str | None, typer.Option("--attn", help="Attention implementation: auto, sdpa, fa2, eager.")]
    = None,
) -> None:
    """Serve models over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /v1/score)."""
    from tunelab.commands.serve import serve as run_server
    from tunelab.serve.config import load_serve_config

    run_server(load_serve_config(config, {
        "model": model, "adapter": adapter or [], "template": template, "engine": engine, "host": host,
        "port": port, "api_key": api_key, "served_model_name": served_model_name, "max_concurrency": max_concurrency,
        "max_queue": max_queue, "quiet": quiet, "trust_remote_code": trust_remote_code, "revision": revision,
        "flash_attn": attn, "rag_db": rag_db, "rag_collection": rag_collection, "rag_top_k": rag_top_k,
        "rag_max_distance": rag_max_distance, "rag_template": rag_template}))


@app.command()
@_friendly_errors
def webui(
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also publish a public Gradio link (needs --public).")]
    = False,
    public: Annotated[bool, typer.Option("--public", help="Confirm a page reachable from other machines (a host "
                                         "other than 127.0.0.1, or --share).")] = False,
    password: Annotated[str | None, typer.Option("--password", help="Ask for this password (user: --user).")]
    = None,
    user: Annotated[str, typer.Option("--user", help="User name with --password.")] = "tunelab",
    outputs: Annotated[str, typer.Option("--outputs", help="Folder whose runs the page lists.")] = "outputs",
) -> None:
    """Web UI: train from forms of the config schema and watch the loss, chat, evaluate and export."""
    from tunelab.commands.webui import webui_command

    webui_command(host, port, share, password, user, public, outputs)


@app.command()
@_friendly_errors
def demo(
    output_dir: Annotated[str, typer.Option(help="Where the demo run goes.")] = "outputs/demo",
) -> None:
    """Offline CPU demo: LoRA SFT of the embedded model, with a before/after score on held-out prompts."""
    from tunelab.commands.flags import output_folder
    from tunelab.demo.run import run_demo

    if run_demo(str(output_folder(output_dir, "--output-dir"))) is None:
        raise typer.Exit(signals.STOP.exit_code)
