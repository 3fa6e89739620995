"""The page: Train (``train_tab.py``), Chat, Evaluate & predict, Export. Each tab drives the code of its command
(`tunelab train` as a process, the engine layer's Predictor, `tunelab eval`, `tunelab export`); the page only lays
out and wires."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from tunelab.errors import TunelabError
from tunelab.webui import jobs
from tunelab.webui.train_tab import CSS, build_train_tab


def _finished_runs(root: Path) -> list[str]:
    return [str(run.output_dir) for run in jobs.list_runs(root) if run.state == "finished"]



# --- Chat ----------------------------------------------------------------------------------------------

_predictors: dict[tuple[str, str, str], Any] = {}


def _full_run(path: str | None) -> bool:
    """A run of full or freeze fine-tuning: a whole model, not an adapter."""
    return bool(path) and (Path(path) / "config.json").is_file() and not (Path(path) / "adapter_config.json").is_file()


def _predictor(model: str, adapter: str, template: str) -> Any:
    """One loaded model per (model, adapter, template), through the engine layer that `chat` and `serve` use."""
    if _full_run(adapter):
        model, adapter = adapter, ""
    key = (model, adapter, template)
    if key not in _predictors:
        from tunelab.commands.flags import ModelFlags
        from tunelab.inference.predictor import Predictor

        flags = ModelFlags(model=model or None, adapter=adapter or None, template=template or None)
        options = flags.check(use="generate")
        _predictors.clear()  # one model in memory at a time
        _predictors[key] = Predictor(flags.model, adapter=flags.adapter, template=flags.template, options=options)
    return _predictors[key]


_retrievers: dict[tuple[str, int, float], Any] = {}


def _retriever(db: str, top_k: int, max_distance: float) -> Any:
    """The RAG index of a chat (None without one), opened once per settings, checked as `chat --rag-db` does."""
    if not db:
        return None
    key = (db, top_k, max_distance)
    if key not in _retrievers:
        from tunelab.commands.flags import RagFlags

        flags = RagFlags(db, top_k=top_k, max_distance=max_distance)
        flags.check()
        _retrievers.clear()
        _retrievers[key] = flags.retriever()
    return _retrievers[key]


def _sources_message(hits: list[Any]) -> list[dict[str, Any]]:
    lines = [f"{hit.where()} (distance {hit.distance:.3f})" for hit in hits] or ["none close enough"]
    return [{"role": "assistant", "content": "\n".join(lines), "metadata": {"title": "sources"}}]


def _as_messages(text: str, done: bool) -> list[dict[str, Any]]:
    """The answer so far, its reasoning (if any) as a folded message before it."""
    from tunelab.inference.reasoning import split_reasoning

    reasoning, answer, _ = split_reasoning(text, inside=False, final=done)
    shown = [{"role": "assistant", "content": reasoning, "metadata": {"title": "Thinking", "status": "done"}}] \
        if reasoning else []
    return shown + [{"role": "assistant", "content": answer}]


def build_chat_tab(outputs_root: Path) -> dict[str, Any]:
    with gr.Row():
        run_pick = gr.Dropdown(_finished_runs(outputs_root), label="finished run (adapter or model folder)",
                               elem_id="chat-run", allow_custom_value=True)
        refresh = gr.Button("Refresh runs", elem_id="chat-refresh")
    with gr.Row():
        model = gr.Textbox(label="model (empty: the run's base, else the embedded stories260K)", elem_id="chat-model")
        template = gr.Textbox(label="template (empty: the tokenizer's own)", elem_id="chat-template")
    system = gr.Textbox(label="system prompt", elem_id="chat-system")
    with gr.Row():
        max_new_tokens = gr.Slider(1, 2048, value=128, step=1, label="max_new_tokens", elem_id="chat-max-new-tokens")
        temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature (0: greedy)",
                                elem_id="chat-temperature")
        top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p", elem_id="chat-top-p")
    with gr.Accordion("Reasoning budget (budget forcing of a <think> section; empty: none)", open=False):
        with gr.Row():
            max_thinking = gr.Number(None, precision=0, label="max_thinking_tokens", elem_id="chat-max-thinking")
            num_wait = gr.Number(None, precision=0, label="num_wait", elem_id="chat-num-wait")
            max_answer = gr.Number(None, precision=0, label="max_answer_tokens", elem_id="chat-max-answer")
    with gr.Accordion("Answer from documents (RAG: a `tunelab rag index` folder; empty: none)", open=False):
        with gr.Row():
            rag_db = gr.Textbox(label="rag_db", elem_id="chat-rag-db")
            rag_top_k = gr.Number(3, precision=0, label="rag_top_k", elem_id="chat-rag-top-k")
            rag_max_distance = gr.Number(0.5, label="rag_max_distance", elem_id="chat-rag-max-distance")
    chatbot = gr.Chatbot(label="chat", elem_id="chatbot", height=420)
    message = gr.Textbox(label="message", elem_id="chat-message", submit_btn=True)
    clear = gr.Button("Clear", elem_id="chat-clear")
    error = gr.Markdown(elem_id="chat-error")

    def respond(text: str, shown: list[dict[str, Any]], run: str | None, model_name: str, template_name: str,
                system_prompt: str, tokens: float, temp: float, nucleus: float, thinking: float | None,
                waits: float | None, answer_tokens: float | None, db: str, top_k: float | None,
                max_distance: float | None) -> Iterator[list[Any]]:
        shown = list(shown or [])
        if not text.strip():
            yield [shown, "", ""]
            return
        try:
            retriever = _retriever((db or "").strip(), 3 if top_k is None else int(top_k),
                                   float(0.5 if max_distance is None else max_distance))
            predictor = _predictor(model_name.strip(), (run or "").strip(), template_name.strip())
            predictor.rag = retriever
        except TunelabError as problem:
            yield [shown, text, f"**error**: {problem}"]
            return
        history = [{"role": m["role"], "content": m["content"]} for m in shown
                   if not (m.get("metadata") or {}).get("title") and isinstance(m.get("content"), str)]
        shown.append({"role": "user", "content": text})
        budget = {name: int(value) for name, value in (("max_thinking_tokens", thinking), ("num_wait", waits),
                                                       ("max_answer_tokens", answer_tokens)) if value is not None}
        answer = ""
        try:
            for piece in predictor.stream(text, history, system_prompt or None, max_new_tokens=int(tokens),
                                          temperature=float(temp), top_p=float(nucleus), **budget):
                answer += piece
                yield [shown + _as_messages(answer, False), "", ""]
        except TunelabError as problem:  # a budget the engine refuses, named
            yield [shown[:-1], text, f"**error**: {problem}"]
            return
        sources = _sources_message(predictor.last_sources) if retriever is not None else []
        yield [shown + sources + _as_messages(answer, True), "", ""]

    inputs = [message, chatbot, run_pick, model, template, system, max_new_tokens, temperature, top_p, max_thinking,
              num_wait, max_answer, rag_db, rag_top_k, rag_max_distance]
    message.submit(respond, inputs, [chatbot, message, error])
    clear.click(lambda: [[], ""], None, [chatbot, error])
    refresh.click(lambda: gr.update(choices=_finished_runs(outputs_root)), None, [run_pick])
    return {"run": run_pick}


# --- Evaluate & Export: the commands themselves, as processes ----------------------------------------------

def _run_command(arguments: list[str], workdir: Path) -> Iterator[str]:
    """`tunelab ...` with its output as it comes."""
    shown = "$ tunelab " + " ".join(shlex.quote(a) for a in arguments) + "\n"
    yield shown
    process = subprocess.Popen([sys.executable, "-m", "tunelab", *arguments], cwd=workdir, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        shown += line
        yield shown
    process.wait()
    yield shown + f"\n[exit {process.returncode}]"


def _flag(name: str, value: Any) -> list[str]:
    return [] if value in (None, "") else [name, str(value)]


def build_eval_tab(workdir: Path, outputs_root: Path) -> None:
    with gr.Row():
        dataset = gr.Textbox(label="dataset (registry name or file)", elem_id="eval-dataset")
        dataset_dir = gr.Textbox(label="dataset_dir", value="data", elem_id="eval-dataset-dir")
        run_pick = gr.Dropdown(_finished_runs(outputs_root), label="adapter / run", elem_id="eval-run",
                               allow_custom_value=True)
    with gr.Row():
        metrics = gr.Textbox(label="metrics", value="auto", elem_id="eval-metrics")
        max_samples = gr.Textbox(label="max_samples", value="20", elem_id="eval-max-samples")
        max_new_tokens = gr.Textbox(label="max_new_tokens", value="64", elem_id="eval-max-new-tokens")
        output_dir = gr.Textbox(label="output_dir", value="outputs/eval", elem_id="eval-output-dir")
        rag_db = gr.Textbox(label="rag_db (RAG index; empty: none)", elem_id="eval-rag-db")
    with gr.Row():
        go = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
        predict = gr.Button("Predict (write predictions.jsonl)", elem_id="predict-start")
    table = gr.Dataframe(label="results", elem_id="eval-results", interactive=False)
    log = gr.Textbox(label="log", lines=12, autoscroll=True, elem_id="eval-log", interactive=False)

    def evaluate(name: str, folder: str, run: str | None, chosen: str, limit: str, tokens: str, out: str,
                 db: str) -> Iterator[list[Any]]:
        import pandas as pd

        arguments = ["eval", name, "--dataset-dir", folder or "data", "--metrics", chosen or "auto",
                     "--output-dir", out or "outputs/eval", *_flag("--adapter", run), *_flag("--max-samples", limit),
                     *_flag("--max-new-tokens", tokens), *_flag("--rag-db", (db or "").strip())]
        text = ""
        for text in _run_command(arguments, workdir):
            yield [gr.update(), text]
        results = workdir / (out or "outputs/eval") / "eval_results.json"
        if results.is_file() and text.rstrip().endswith("[exit 0]"):
            data = json.loads(results.read_text())
            rows = data if isinstance(data, list) else [data]
            yield [pd.json_normalize(rows), text]

    go.click(evaluate, [dataset, dataset_dir, run_pick, metrics, max_samples, max_new_tokens, output_dir, rag_db],
             [table, log])

    def predictions(name: str, folder: str, run: str | None, limit: str, tokens: str, out: str, db: str
                    ) -> Iterator[str]:
        target = str(Path(out or "outputs/eval") / "predictions.jsonl")
        yield from _run_command(["predict", name, "--dataset-dir", folder or "data", "--output", target,
                                 *_flag("--adapter", run), *_flag("--max-samples", limit),
                                 *_flag("--max-new-tokens", tokens), *_flag("--rag-db", (db or "").strip())], workdir)

    predict.click(predictions, [dataset, dataset_dir, run_pick, max_samples, max_new_tokens, output_dir, rag_db],
                  [log])


def build_export_tab(workdir: Path, outputs_root: Path) -> None:
    with gr.Row():
        run_pick = gr.Dropdown(_finished_runs(outputs_root), label="adapter / run to export", elem_id="export-run",
                               allow_custom_value=True)
        model = gr.Textbox(label="base model (empty: the adapter's)", elem_id="export-model")
        output = gr.Textbox(label="output folder", value="outputs/export", elem_id="export-output")
    with gr.Row():
        export_format = gr.Dropdown(["hf", "gguf"], value="hf", label="format", elem_id="export-format")
        dtype = gr.Dropdown(["auto", "float32", "float16", "bfloat16"], value="auto", label="dtype (hf)",
                            elem_id="export-dtype")
        quantization = gr.Textbox(label="quantization (gguf: f16, q8_0, ...; hf: 4 or 8)", elem_id="export-quant")
        overwrite = gr.Checkbox(label="overwrite an earlier export", elem_id="export-overwrite")
    with gr.Row():
        template = gr.Textbox(label="template (empty: the run's)", elem_id="export-template")
        shard_size = gr.Textbox(label="largest shard, GB (hf)", elem_id="export-shard-size")
        ollama = gr.Checkbox(label="gguf: also an Ollama Modelfile", elem_id="export-ollama")
    go = gr.Button("Export", variant="primary", elem_id="export-start")
    log = gr.Textbox(label="log", lines=12, autoscroll=True, elem_id="export-log", interactive=False)

    def export(run: str | None, base: str, out: str, fmt: str, weights: str, quant: str, replace: bool,
               template_name: str, shard: str, modelfile: bool) -> Iterator[str]:
        if _full_run(run):
            run, base = None, run
        arguments = ["export", *_flag("--adapter", run), *_flag("--model", base), "--output", out or "outputs/export",
                     "--format", fmt, *_flag("--dtype", weights if fmt == "hf" else None),
                     *_flag("--quantization", quant), *_flag("--template", template_name),
                     *_flag("--shard-size", shard), *(["--overwrite"] if replace else []),
                     *(["--ollama"] if modelfile else [])]
        yield from _run_command(arguments, workdir)

    go.click(export, [run_pick, model, output, export_format, dtype, quantization, overwrite, template, shard_size,
                      ollama], [log])


def build_app(workdir: Path, outputs_root: Path) -> gr.Blocks:
    with gr.Blocks(title="tunelab") as page:
        gr.Markdown("# tunelab\nTrain, watch, chat, evaluate and export. Every setting is a config key of "
                    "`tunelab train`; the YAML and command line of the form are shown below it.")
        with gr.Tab("Train", id="train"):
            build_train_tab(workdir, outputs_root)
        with gr.Tab("Chat", id="chat"):
            build_chat_tab(outputs_root)
        with gr.Tab("Evaluate & predict", id="evaluate"):
            build_eval_tab(workdir, outputs_root)
        with gr.Tab("Export", id="export"):
            build_export_tab(workdir, outputs_root)
    return page


def launch(host: str, port: int, share: bool, auth: tuple[str, str] | None, workdir: Path, outputs_root: Path,
           block: bool = True) -> Any:
    page = build_app(workdir, outputs_root)
    page.queue()
    return page.launch(server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=not block,
                       css=CSS, show_error=True, quiet=False)
