"""The web UI: the Train form never falls behind the config schema, its errors are the CLI's and sit next to their
field, trainings are processes the page finds again; and, where Chromium is installed, the whole path in a real
browser (pick data, train, watch the curve, chat with the result)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.config.files import build_config, describe_keys, every_key, parse_overrides
from tunelab.errors import ConfigError, TunelabError
from tunelab.webui import forms, jobs

REPO = Path(__file__).resolve().parents[1]
LLAMAFACTORY_DATA = REPO / "tests" / "fixtures" / "data" / "llamafactory"
CHROMIUM = Path("/usr/bin/chromium")


def test_every_config_key_of_every_stage_and_method_is_a_form_field():
    fields = {field.key: field for field in forms.form_fields()}
    assert set(fields) | set(forms.CHOSEN_BY_SELECTORS) == set(every_key())
    for info in describe_keys():
        if info.key in forms.CHOSEN_BY_SELECTORS:
            continue
        for stage in info.stages or forms.stage_names():
            for method in info.methods or forms.method_names():
                assert fields[info.key].shown_for(stage, method), (info.key, stage, method)
    # a stage's own key is hidden for the others, so the form shows what this run reads
    assert not fields["pref_beta"].shown_for("sft", "lora") and fields["pref_beta"].shown_for("dpo", "lora")
    assert not fields["adalora_init_r"].shown_for("sft", "lora")


def test_the_page_draws_a_component_for_every_field(tmp_path):
    from tunelab.webui.app import build_app

    page = build_app(tmp_path, tmp_path / "outputs")
    drawn = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {f"field-{field.key}" for field in forms.form_fields()} <= drawn
    assert {"field-stage", "field-finetuning_type", "loss-plot", "chatbot", "eval-start", "export-start"} <= drawn


def test_form_values_yaml_and_command_line_make_the_same_config():
    fields = forms.form_fields()
    raw = [{"dataset": "alpaca_en_demo", "max_steps": "4", "learning_rate": "2e-4", "lora_target": "q_proj,v_proj"}
           .get(field.key, field.initial()) for field in fields]
    values = forms.config_values("sft", "lora", fields, raw)
    assert values == {"stage": "sft", "finetuning_type": "lora", "dataset": "alpaca_en_demo", "max_steps": 4,
                      "learning_rate": 2e-4, "lora_target": "q_proj,v_proj"}
    assert forms.check(values) == {}
    overrides = forms.command_line(values).splitlines()[-1].removeprefix("tunelab train ")
    import shlex

    assert build_config(parse_overrides(shlex.split(overrides))) == build_config(values)


def test_config_errors_sit_next_to_their_field_with_the_clis_text():
    errors = forms.check({"stage": "sft", "finetuning_type": "lora", "lora_rank": -1})
    assert list(errors) == ["lora_rank"] and "greater than 0" in errors["lora_rank"]
    errors = forms.check({"stage": "sft", "finetuning_type": "lora", "adalora_init_r": 4})
    assert "applies to finetuning_type adalora" in errors["adalora_init_r"]
    with pytest.raises(ConfigError) as raised:
        build_config({"stage": "sft", "finetuning_type": "lora", "adalora_init_r": 4}, source="form")
    assert errors["adalora_init_r"] in str(raised.value)


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_WEBUI_STATE", str(tmp_path / "state"))
    output = tmp_path / "outputs" / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        slot = jobs._slot(output)
        slot.mkdir(parents=True)
        (slot / "job.json").write_text(json.dumps({"pid": sleeper.pid, "output_dir": str(output), "exit": None}))
        assert jobs.describe(output).state == "running"
        with pytest.raises(ConfigError, match="already has a training running"):
            jobs.start_training({"stage": "sft", "output_dir": str(output)}, tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert jobs.describe(output).state != "running"


def test_runs_are_found_again_with_their_state_and_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_WEBUI_STATE", str(tmp_path / "state"))
    root = tmp_path / "outputs"
    finished, interrupted = root / "finished", root / "interrupted"
    for folder in (finished, interrupted):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("stage: sft\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": step, "loss": 3.0 - step / 10,
                                                                  "learning_rate": 1e-4}) + "\n" for step in (1, 2)))
    (finished / "adapter_config.json").write_text("{}")
    (finished / "README.md").write_text("card")
    (interrupted / "checkpoint-2").mkdir()
    (interrupted / "checkpoint-2" / "trainer_state.json").write_text("{}")
    runs = {run.output_dir.name: run for run in jobs.list_runs(root)}
    assert runs["finished"].state == "finished" and runs["interrupted"].state == "interrupted"
    assert [point["step"] for point in runs["finished"].points] == [1, 2] and runs["finished"].last_loss == 2.8


def test_the_evaluate_and_export_tabs_run_the_commands_themselves(tmp_path):
    from tunelab.webui.app import _run_command

    shown = list(_run_command(["rewards", "list"], tmp_path))
    assert shown[0].startswith("$ tunelab rewards list") and shown[-1].rstrip().endswith("[exit 0]")
    assert "accuracy" in shown[-1]
    failed = list(_run_command(["export", "--format", "onnx"], tmp_path))[-1]
    assert "error:" in failed and failed.rstrip().endswith("[exit 2]")


def test_chat_shows_a_think_block_folded_before_the_answer():
    from tunelab.webui.app import _as_messages

    shown = _as_messages("<think>\nThe user greets me.\n</think>\n\nHello!", done=True)
    assert shown == [{"role": "assistant", "content": "The user greets me.",
                      "metadata": {"title": "Thinking", "status": "done"}},
                     {"role": "assistant", "content": "Hello!"}]
    assert _as_messages("Hello!", done=True) == [{"role": "assistant", "content": "Hello!"}]
    assert _as_messages("<thi", done=False) == [{"role": "assistant", "content": ""}]  # a marker may be coming


def test_chat_opens_a_rag_index_as_chat_rag_db_does(tmp_path):
    from tunelab.inference.rag.retriever import Hit
    from tunelab.webui.app import _retriever, _sources_message

    assert _retriever("", 3, 0.5) is None  # no index: questions go in as asked
    with pytest.raises(TunelabError, match="--rag-db .* does not exist; build one with: tunelab rag index"):
        _retriever(str(tmp_path / "none"), 3, 0.5)
    hit = Hit("text", str(tmp_path / "docs.jsonl"), 4, 1, 0.25)
    assert _sources_message([hit]) == [{"role": "assistant", "metadata": {"title": "sources"},
                                        "content": f"{tmp_path / 'docs.jsonl'} record 4 chunk 1 (distance 0.250)"}]


# --- in a real browser ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """`tunelab webui` on the embedded model, in a folder whose data/ is LLaMA-Factory's demo data."""
    if not CHROMIUM.is_file():
        pytest.skip("chromium is not installed (make test installs it where apt-get can run)")
    pytest.importorskip("playwright")
    workdir = tmp_path_factory.mktemp("webui")
    shutil.copytree(LLAMAFACTORY_DATA, workdir / "data")
    port = _free_port()
    env = dict(os.environ, TUNELAB_WEBUI_STATE=str(workdir / "state"), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="0")
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "tunelab", "webui", "--port", str(port)], cwd=workdir, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail((workdir / "server.log").read_text())
            time.sleep(0.5)
    yield url, workdir
    server.terminate()
    server.wait(timeout=30)


def _field(page, key: str):
    return page.locator(f"#field-{key} textarea, #field-{key} input").first


def _wait(predicate, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_train_watch_and_chat_in_a_browser(webui):
    from playwright.sync_api import sync_playwright

    url, workdir = webui
    shots = workdir / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1600})
        page.set_default_timeout(60_000)
        page.goto(url, wait_until="load")  # Gradio pages never reach "networkidle"
        page.wait_for_selector("#field-dataset")

        # an invalid value: the CLI's error, next to its field, before anything starts
        _field(page, "learning_rate").fill("fast")
        _field(page, "dataset").click()
        assert _wait(lambda: "tl-error" in (page.locator("#field-learning_rate").get_attribute("class") or ""), 30)
        assert "learning_rate" in page.locator("#form-errors").inner_text()
        assert "valid number" in page.locator("#field-learning_rate").inner_text()
        page.screenshot(path=str(shots / "train-error.png"))
        page.locator("#start-training").click()
        assert _wait(lambda: "Not started" in page.locator("#train-status").inner_text(), 30)
        _field(page, "learning_rate").fill("0.0001")
        _field(page, "dataset").fill("no_such_dataset")
        _field(page, "dataset").blur()
        assert _wait(lambda: "tl-error" not in (page.locator("#field-learning_rate").get_attribute("class") or ""), 30)
        # a data mistake is found by `train --dry-run` before the run starts, with the CLI's error line
        page.locator("#start-training").click()
        assert _wait(lambda: "no_such_dataset" in page.locator("#train-status").inner_text(), 120)
        assert "Not started" in page.locator("#train-status").inner_text()

        # pick the demo dataset, preview it, start a short LoRA run and watch it finish
        picker = page.locator("#dataset-pick input").first
        picker.click()
        picker.fill("alpaca_en_demo")
        page.keyboard.press("Enter")
        assert _wait(lambda: _field(page, "dataset").input_value() == "alpaca_en_demo", 30)
        for key, value in (("max_steps", "4"), ("logging_steps", "1"), ("save_steps", "2"), ("cutoff_len", "256"),
                           ("output_dir", "outputs/browser-run")):
            _field(page, key).fill(value)
            _field(page, key).blur()
        assert _wait(lambda: "max_steps: 4" in page.locator("#config-yaml").inner_text(), 30)
        assert "tunelab train" in page.locator("#config-command").inner_text()
        page.locator("#preview-data").click()
        assert _wait(lambda: "format alpaca" in page.locator("#data-preview").inner_text(), 60)
        assert page.locator("#data-preview .tl-trained").count() > 0  # the trained text is marked
        page.locator("#start-training").click()
        assert _wait(lambda: "started" in page.locator("#train-status").inner_text(), 30)
        assert _wait(lambda: "finished" in page.locator("#runs input").first.input_value(), 300, 2), \
            page.locator("#train-log textarea").input_value()[-2000:]
        assert "step 4" in page.locator("#runs input").first.input_value()
        assert _wait(lambda: page.locator("#loss-plot svg").count() > 0, 30)
        assert "use it" in page.locator("#train-log textarea").input_value()
        page.screenshot(path=str(shots / "train.png"), full_page=True)
        metrics = [json.loads(line) for line in (workdir / "outputs" / "browser-run" / "metrics.jsonl").read_text()
                   .splitlines()]
        assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]

        # a new page finds the run again with its state
        page.goto(url, wait_until="load")
        page.wait_for_selector("#field-dataset")
        page.locator("#runs input").first.click()
        assert _wait(lambda: "browser-run" in " ".join(page.locator("ul[role=listbox] li").all_inner_texts()), 30)
        page.keyboard.press("Escape")

        # chat with the finished run: a streamed answer
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-refresh").click()
        run_picker = page.locator("#chat-run input").first
        run_picker.click()
        page.locator("ul[role=listbox] li", has_text="browser-run").first.click()
        message = page.locator("#chat-message textarea").first
        message.fill("Tell me a story about a cat.")
        message.press("Enter")
        assert _wait(lambda: len(page.locator("#chatbot").inner_text()) > 80, 120, 2), \
            page.locator("#chat-error").inner_text()
        assert "Tell me a story about a cat." in page.locator("#chatbot").inner_text()
        page.screenshot(path=str(shots / "chat.png"))
        for tab in ("Evaluate & predict", "Export"):
            page.get_by_role("tab", name=tab).click()
            page.screenshot(path=str(shots / f"{tab.split()[0].lower()}.png"))
        browser.close()
    print(f"screenshots: {shots}")
