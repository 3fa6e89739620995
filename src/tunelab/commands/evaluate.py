"""`tunelab eval` as a command: which systems to compare (paths checked, nothing loaded), the data and its
references, the metrics that apply, then the evaluation and its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.commands.flags import ModelFlags, RagFlags, SamplingFlags, at_least, load_options, output_folder
from tunelab.commands.predict import report_skipped
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.evaluation.report import print_results
from tunelab.evaluation.run import (
    GenerationSettings,
    System,
    check_references,
    choose_metrics,
    read_predictions,
    run_eval,
)
from tunelab.inference.loading import LoadOptions, base_model_for, check_inference_sources
from tunelab.inference.predict import load_samples


def eval_systems(models: list[str], adapters: list[str], predictions: list[str], with_base: bool) -> list[System]:
    """The columns of the comparison, checked (paths, no model load): predictions files, adapters (on one base
    model) or models. A run folder of a full fine-tune passed as --adapter is evaluated as a model."""
    if predictions:
        if models or adapters or with_base:
            raise TunelabError("--predictions scores existing answers; it does not go with --model, --adapter or "
                               "--with-base")
        return [System(Path(p).stem if len(predictions) > 1 else "predictions", predictions=p)
                for p in _unique_labels(predictions)]
    for flag, given in (("--adapter", adapters), ("--model", models)):
        twice = sorted({item for item in given if given.count(item) > 1})
        if twice:
            raise TunelabError(f"{flag} {twice[0]} is given twice; each system is evaluated once")
    full_runs = [a for a in adapters if not (Path(a) / "adapter_config.json").is_file()
                 and (Path(a) / "config.json").is_file()]
    adapters = [a for a in adapters if a not in full_runs]
    models = models + full_runs
    if not adapters:
        if with_base:
            raise TunelabError("--with-base adds the base model beside adapters; give --adapter (or compare models "
                               "with several --model)")
        for model in models:
            check_inference_sources(model, None, use="generate")
        systems = [System(Path(base_model_for(m, None)).name, model=m) for m in models or [None]]
    else:
        if len(models) > 1:
            raise TunelabError("several --model with --adapter: adapters are compared on one base model; give at "
                               "most one --model (pass full-model runs as --model, without adapters)")
        base = models[0] if models else None
        for adapter in adapters:
            check_inference_sources(base, adapter, use="generate")
        base_name = base_model_for(base, adapters[0])
        systems = [System(f"base ({Path(base_name).name})", model=base_name)] if with_base else []
        systems += [System(Path(a).name, model=base, adapter=a) for a in adapters]
    if len({s.label for s in systems}) < len(systems):  # runs named alike in different folders: use the paths
        systems = [System(s.adapter or s.model or s.label, s.model, s.adapter) for s in systems]
    return systems


def _unique_labels(paths: list[str]) -> list[str]:
    if len({Path(p).stem for p in paths}) < len(paths):
        raise TunelabError("two --predictions files share a name; rename one so the comparison can tell them apart")
    return paths


def evaluate_and_report(systems: list[System], dataset: str | None, *, dataset_dir: str, max_samples: int | None,
                        skip_invalid: bool, skip_hint: str, metrics: str, task: str, language: str, output_dir: str,
                        options: LoadOptions, template: str | None, settings: GenerationSettings,
                        as_json: bool) -> dict[str, Any]:
    """Read the data (or every predictions file), choose the metrics, evaluate, print the table or the JSON."""
    samples = None
    if dataset is not None:
        samples = load_samples(dataset, dataset_dir, max_samples, skip_invalid=skip_invalid, skip_hint=skip_hint)
        report_skipped(samples)
        golds = [reference for _, reference, _ in samples]
        notes = check_references(golds, f"dataset '{dataset}'")
    else:
        files = [s.predictions for s in systems]
        golds, notes = [], []
        for file in files:  # every file is read (and checked) before any is scored
            references = [refs[0] for refs in read_predictions(file)[1]]
            notes += check_references(references, f"--predictions '{file}'")
            golds = golds or references
    chosen, found, more = choose_metrics(metrics, task, golds, generating=samples is not None)
    for note in notes + more:
        console.print(f"note: {note}", markup=False, highlight=False)
    results = run_eval(systems, samples, chosen, output_dir=output_dir, settings=settings, options=options,
                       language=language, task=found, template=template)
    if as_json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        print_results(results, output_dir)
    return results


def eval_command(dataset: str | None, predictions: list[str], *, models: list[str], adapters: list[str],
                 with_base: bool, flags: ModelFlags, sampling: SamplingFlags, dataset_dir: str, metrics: str,
                 task: str, language: str, output_dir: str, batch_size: int, max_samples: int | None,
                 cutoff_len: int, skip_invalid: bool, skip_hint: str, as_json: bool,
                 rag: RagFlags | None = None) -> dict[str, Any]:
    """Every flag checked (values, paths, names) before the data is read or any model loads; then evaluate."""
    from tunelab.data.templates import check_template_name
    from tunelab.metrics import parse_metrics
    from tunelab.metrics.answers import TASKS
    from tunelab.metrics.text import LANGUAGES

    if (dataset is None) == (not predictions):
        raise TunelabError("give a DATASET to generate on, or --predictions FILE to score (not both)")
    at_least(1, batch_size=batch_size, max_samples=max_samples, cutoff_len=cutoff_len)
    sampling.check()
    rag = rag or RagFlags()
    rag.check()
    if rag.db is not None and predictions:
        raise TunelabError("--rag-db retrieves for generation; --predictions files are scored as they are")
    if language not in LANGUAGES:
        raise TunelabError(f"--language: language '{language}' is not one of {', '.join(LANGUAGES)}")
    if task not in ("auto", *TASKS):
        raise TunelabError(f"--task '{task}' is not one of auto, {', '.join(TASKS)}")
    if metrics != "auto":
        parse_metrics(metrics)
    for path in predictions:
        if not Path(path).expanduser().is_file():
            raise TunelabError(f"--predictions '{path}' is not a file (expected JSONL from `tunelab predict`)")
    output_folder(output_dir, "--output-dir")
    check_template_name(flags.template, "--template")
    options = load_options(flags.trust_remote_code, flags.revision, flags.attn)
    systems = eval_systems(models, adapters, predictions, with_base)
    settings = GenerationSettings(batch_size, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                  cutoff_len, sampling.budget(), rag.retriever())
    return evaluate_and_report(systems, dataset, dataset_dir=dataset_dir, max_samples=max_samples,
                               skip_invalid=skip_invalid, skip_hint=skip_hint, metrics=metrics, task=task,
                               language=language, output_dir=output_dir, options=options, template=flags.template,
                               settings=settings, as_json=as_json)
