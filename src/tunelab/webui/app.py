"""The page: Train, Chat, Evaluate & predict, Export. Each tab drives the code of its command (`tunelab train` as a
process, the engine layer's Predictor, `tunelab eval`, `tunelab export`); this module only lays out and wires."""

from __future__ import annotations

import html
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
from tunelab.webui import forms, jobs

REFRESH_SECONDS = 2.0
ERROR_CLASS = "tl-error"
CSS = f".{ERROR_CLASS} textarea, .{ERROR_CLASS} input {{border-color: #c0392b !important}} " \
      f".{ERROR_CLASS} .info, .{ERROR_CLASS} span[data-testid='block-info'] {{color: #c0392b}} " \
      ".tl-trained {background: #d4efdf} .tl-sample {white-space: pre-wrap; font-family: monospace}"


# --- Train ---------------------------------------------------------------------------------------------

def _component(field: forms.Field) -> Any:
    common = {"label": field.key, "info": field.help, "elem_id": f"field-{field.key}", "interactive": True}
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), **common)
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=field.default, **common)
    return gr.Textbox(value=field.initial(), placeholder="default" if field.default is None else None, **common)


def _field_rows(fields: list[forms.Field], components: dict[str, Any], per_row: int = 3) -> None:
    for start in range(0, len(fields), per_row):
        with gr.Row(equal_height=True):
            for field in fields[start:start + per_row]:
                components[field.key] = _component(field)


def _dataset_names(dataset_dir: str, workdir: Path) -> list[str]:
    path = workdir / (dataset_dir or "data") / "dataset_info.json"
    try:
        return sorted(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return []


def _preview_html(report: dict[str, Any]) -> str:
    """The `data inspect` view: format, counts, skipped records, rendered samples with the trained text marked."""
    head = [f"<b>{html.escape(str(report['dataset']))}</b> ({html.escape(str(report['source']))}): format "
            f"{html.escape(str(report['format']))}, {report['num_rows']} rows, {report['num_skipped']} skipped"]
    for reason, count in (report.get("skipped") or {}).items():
        head.append(f"skipped {html.escape(str(count))}: {html.escape(str(reason))}")
    lengths = report.get("token_lengths") or {}
    if lengths:
        head.append("tokens per sample: " + ", ".join(f"{key} {value}" for key, value in lengths.items()))
    samples = []
    for sample in report.get("samples", []):
        runs = "".join(f"<span class='tl-trained'>{html.escape(run['text'])}</span>" if run["trained"]
                       else html.escape(run["text"]) for run in sample.get("segments", []))
        samples.append(f"<div class='tl-sample'><i>record {sample['line']}: {sample['num_tokens']} tokens, "
                       f"{sample['num_trained_tokens']} trained</i><br>{runs}</div>")
    return "<br>".join(head) + "<hr>" + "<hr>".join(samples) + "<p><span class='tl-trained'>marked</span> text " \
        "carries loss</p>"


def _curve_frames(run: jobs.Run | None) -> tuple[Any, Any]:
    import pandas as pd

    points = run.points if run else []
    loss = pd.DataFrame({"step": [p["step"] for p in points], "loss": [p["loss"] for p in points]})
    rates = [p for p in points if "learning_rate" in p]
    rate = pd.DataFrame({"step": [p["step"] for p in rates], "learning_rate": [p["learning_rate"] for p in rates]})
    return loss, rate


def _run_choices(root: Path) -> list[tuple[str, str]]:
    return [(run.label, str(run.output_dir)) for run in jobs.list_runs(root)]


def _finished_runs(root: Path) -> list[str]:
    return [str(run.output_dir) for run in jobs.list_runs(root) if run.state == "finished"]


def build_train_tab(workdir: Path, outputs_root: Path) -> dict[str, Any]:
    fields = forms.form_fields()
    with gr.Row():
        stage = gr.Dropdown(forms.stage_names(), value="sft", label="stage", elem_id="field-stage")
        method = gr.Dropdown(forms.method_names(), value="lora", label="finetuning_type",
                             elem_id="field-finetuning_type")
    components: dict[str, Any] = {}
    with gr.Row():
        dataset_pick = gr.Dropdown(_dataset_names("data", workdir), value=None, label="datasets in dataset_dir",
                                   elem_id="dataset-pick", allow_custom_value=True)
        preview_button = gr.Button("Preview data", elem_id="preview-data")
    _field_rows([field for field in fields if field.basic], components)
    with gr.Accordion("All settings of this stage and method", open=False):
        _field_rows([field for field in fields if not field.basic], components)
    preview = gr.HTML(elem_id="data-preview")
    form_errors = gr.Markdown(elem_id="form-errors")
    with gr.Row():
        yaml_box = gr.Code(label="config (YAML)", language="yaml", elem_id="config-yaml", interactive=False)
        command_box = gr.Code(label="command line", language="shell", elem_id="config-command", interactive=False)
    with gr.Row():
        save_path = gr.Textbox(label="save the YAML as", value="config.yaml", elem_id="save-path")
        save_button = gr.Button("Save YAML", elem_id="save-yaml")
        start_button = gr.Button("Start", variant="primary", elem_id="start-training")
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop-training")
    status = gr.Markdown(elem_id="train-status")
    runs = gr.Dropdown(_run_choices(outputs_root), label="runs", elem_id="runs", allow_custom_value=True)
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="loss", elem_id="loss-plot")
        lr_plot = gr.LinePlot(x="step", y="learning_rate", title="learning rate", elem_id="lr-plot")
    log = gr.Textbox(label="log", lines=14, max_lines=14, autoscroll=True, elem_id="train-log", interactive=False)

    ordered = [components[field.key] for field in fields]

    def values_of(stage_name: str, method_name: str, raw: tuple[Any, ...]) -> dict[str, Any]:
        return forms.config_values(stage_name, method_name, fields, list(raw))

    def refresh_form(stage_name: str, method_name: str, *raw: Any) -> list[Any]:
        """YAML, command line and each field's visibility and error, with the CLI's own error text."""
        values = values_of(stage_name, method_name, raw)
        errors = forms.check(values)
        updates = [gr.update(visible=field.shown_for(stage_name, method_name),
                             info=errors.get(field.key, field.help),
                             elem_classes=[ERROR_CLASS] if field.key in errors else [])
                   for field in fields]
        message = "\n\n".join(f"**{key or 'config'}**: {text}" for key, text in errors.items())
        return [forms.to_yaml(values), forms.command_line(values), f"Fix before starting:\n\n{message}" if errors
                else "", *updates]

    form_outputs = [yaml_box, command_box, form_errors, *ordered]
    form_inputs = [stage, method, *ordered]
    for selector in (stage, method):
        selector.change(refresh_form, form_inputs, form_outputs)
    for field, component in zip(fields, ordered, strict=True):
        (component.blur if field.kind == "text" else component.change)(refresh_form, form_inputs, form_outputs)

    dataset_pick.change(lambda name: gr.update(value=name), [dataset_pick], [components["dataset"]]).then(
        refresh_form, form_inputs, form_outputs)

    def preview_data(stage_name: str, method_name: str, *raw: Any) -> str:
        from tunelab.commands.inspect import inspect_dataset

        values = values_of(stage_name, method_name, raw)
        if not values.get("dataset"):
            return "<p>Pick or type a dataset first.</p>"
        names = values["dataset"] if isinstance(values["dataset"], list) else str(values["dataset"]).split(",")
        try:
            report = inspect_dataset(names[0].strip(), dataset_dir=str(workdir / values.get("dataset_dir", "data")),
                                     model=values.get("model_name_or_path", "stories260K"),
                                     template=values.get("template"), stage=stage_name,
                                     cutoff_len=int(values.get("cutoff_len", 2048)), num_samples=2,
                                     skip_invalid=bool(values.get("skip_invalid", False)))
        except TunelabError as error:
            return f"<p class='{ERROR_CLASS}'>{html.escape(str(error))}</p>"
        return _preview_html(report)

    preview_button.click(preview_data, form_inputs, [preview])

    def save_yaml(path: str, stage_name: str, method_name: str, *raw: Any) -> str:
        values = values_of(stage_name, method_name, raw)
        target = (workdir / path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(forms.to_yaml(values), encoding="utf-8")
        return f"saved {target}; run it with `tunelab train {shlex.quote(str(target))}`"

    save_button.click(save_yaml, [save_path, *form_inputs], [status])

    def start(stage_name: str, method_name: str, *raw: Any) -> list[Any]:
        values = values_of(stage_name, method_name, raw)
        errors = forms.check(values)
        if errors:
            text = "\n\n".join(f"**{key or 'config'}**: {message}" for key, message in errors.items())
            return [f"Not started. Fix first:\n\n{text}", gr.update()]
        problem = jobs.check_before_start(values, workdir)  # the data and paths, as `train --dry-run` checks them
        if problem:
            return [f"Not started:\n\n```\n{problem}\n```", gr.update()]
        try:
            run = jobs.start_training(values, workdir)
        except TunelabError as error:
            return [f"Not started: {error}", gr.update()]
        return [f"started: `{run.output_dir}` (log below)",
                gr.update(choices=_run_choices(outputs_root) + [(run.label, str(run.output_dir))],
                          value=str(run.output_dir))]

    start_button.click(start, form_inputs, [status, runs])

    def stop(selected: str | None) -> str:
        if selected and jobs.stop_training(Path(selected)):
            return f"asked `{selected}` to stop: it finishes the step and saves a checkpoint"
        return "no running training selected"

    stop_button.click(stop, [runs], [status])

    def refresh_run(selected: str | None) -> list[Any]:
        choices = _run_choices(outputs_root)
        if selected and selected not in [value for _, value in choices]:
            run = jobs.describe(Path(selected))
            choices.append((run.label, str(run.output_dir)))
        run = jobs.describe(Path(selected)) if selected else None
        loss, rate = _curve_frames(run)
        return [gr.update(choices=choices, value=selected), loss, rate, jobs.log_tail(run) if run else ""]

    runs.change(refresh_run, [runs], [runs, loss_plot, lr_plot, log])
    gr.Timer(REFRESH_SECONDS).tick(refresh_run, [runs], [runs, loss_plot, lr_plot, log])
    return {"runs": runs, "fields": components}


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
    chatbot = gr.Chatbot(label="chat", elem_id="chatbot", height=420)
    message = gr.Textbox(label="message", elem_id="chat-message", submit_btn=True)
    clear = gr.Button("Clear", elem_id="chat-clear")
    error = gr.Markdown(elem_id="chat-error")

    def respond(text: str, shown: list[dict[str, Any]], run: str | None, model_name: str, template_name: str,
                system_prompt: str, tokens: float, temp: float, nucleus: float, thinking: float | None,
                waits: float | None, answer_tokens: float | None) -> Iterator[list[Any]]:
        shown = list(shown or [])
        if not text.strip():
            yield [shown, "", ""]
            return
        try:
            predictor = _predictor(model_name.strip(), (run or "").strip(), template_name.strip())
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
        yield [shown + _as_messages(answer, True), "", ""]

    inputs = [message, chatbot, run_pick, model, template, system, max_new_tokens, temperature, top_p, max_thinking,
              num_wait, max_answer]
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
    with gr.Row():
        go = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
        predict = gr.Button("Predict (write predictions.jsonl)", elem_id="predict-start")
    table = gr.Dataframe(label="results", elem_id="eval-results", interactive=False)
    log = gr.Textbox(label="log", lines=12, autoscroll=True, elem_id="eval-log", interactive=False)

    def evaluate(name: str, folder: str, run: str | None, chosen: str, limit: str, tokens: str, out: str
                 ) -> Iterator[list[Any]]:
        import pandas as pd

        arguments = ["eval", name, "--dataset-dir", folder or "data", "--metrics", chosen or "auto",
                     "--output-dir", out or "outputs/eval", *_flag("--adapter", run), *_flag("--max-samples", limit),
                     *_flag("--max-new-tokens", tokens)]
        text = ""
        for text in _run_command(arguments, workdir):
            yield [gr.update(), text]
        results = workdir / (out or "outputs/eval") / "eval_results.json"
        if results.is_file() and text.rstrip().endswith("[exit 0]"):
            data = json.loads(results.read_text())
            rows = data if isinstance(data, list) else [data]
            yield [pd.json_normalize(rows), text]

    go.click(evaluate, [dataset, dataset_dir, run_pick, metrics, max_samples, max_new_tokens, output_dir],
             [table, log])

    def predictions(name: str, folder: str, run: str | None, limit: str, tokens: str, out: str) -> Iterator[str]:
        target = str(Path(out or "outputs/eval") / "predictions.jsonl")
        yield from _run_command(["predict", name, "--dataset-dir", folder or "data", "--output", target,
                                 *_flag("--adapter", run), *_flag("--max-samples", limit),
                                 *_flag("--max-new-tokens", tokens)], workdir)

    predict.click(predictions, [dataset, dataset_dir, run_pick, max_samples, max_new_tokens, output_dir], [log])


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
