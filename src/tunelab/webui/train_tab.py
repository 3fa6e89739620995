"""The Train tab: the form the config schema generates (``forms.py``), the data preview, the YAML and command line,
and the trainings it starts as processes (``jobs.py``) with their log and curves."""

from __future__ import annotations

import html
import json
import shlex
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
        choices = dict((value, label) for label, value in _run_choices(outputs_root))
        choices.setdefault(str(run.output_dir), run.label)  # a run outside --outputs is listed too
        return [f"started: `{run.output_dir}` (log below)",
                gr.update(choices=[(label, value) for value, label in choices.items()], value=str(run.output_dir))]

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


