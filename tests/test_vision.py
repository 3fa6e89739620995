"""Images with a vision-language model: the tiny Qwen2-VL in tests/fixtures/models (random weights, a real
tokenizer with the vision tokens, a real image processor config) reads real public-domain pictures
(tests/fixtures/images). The answer follows the image, an image is the same whichever way it is sent, each image
becomes the pad tokens the processor says, and every path (Python API, chat, predict, serve) reports a bad image
or a text-only model in one line."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import DataError, TunelabError

REPO = Path(__file__).resolve().parents[1]
TINY_VL = str(REPO / "tests" / "fixtures" / "models" / "tiny-qwen2-vl")
IMAGES = REPO / "tests" / "fixtures" / "images"
COFFEE, CAT = str(IMAGES / "coffee.jpg"), str(IMAGES / "chelsea.jpg")
EXAMPLES = REPO / "examples" / "data"


@pytest.fixture(scope="module")
def predictor() -> Any:
    from tunelab.inference.predictor import Predictor

    return Predictor(TINY_VL, max_new_tokens=6)


def _data_url(path: str) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def test_the_answer_follows_the_image_however_it_is_sent(predictor: Any) -> None:
    by_path = predictor("What is in this picture?", images=[COFFEE])
    assert predictor("What is in this picture?", images=[CAT]) != by_path
    assert predictor("What is in this picture?", images=[Path(COFFEE).as_uri()]) == by_path
    assert predictor("What is in this picture?", images=[_data_url(COFFEE)]) == by_path
    openai_part = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(COFFEE)}},
                                                {"type": "text", "text": "What is in this picture?"}]}]
    assert predictor.generate_batch([openai_part]) == [by_path]


def test_each_image_becomes_the_pad_tokens_the_processor_says(predictor: Any) -> None:
    from tunelab.data.images import image_refs

    engine = predictor.engine
    request = predictor.request(predictor.messages("Compare them.", images=[COFFEE, CAT]))
    ids = engine.prompt_ids(request)
    _, grids = engine.images(image_refs(request.messages))
    per_image = [int(grid.prod()) // 4 for grid in grids]  # merge size 2: four patches a token
    assert ids.count(engine.vision.pad_id) == sum(per_image) and all(count > 0 for count in per_image)
    start = ids.index(engine.vision.pad_id)  # the first image's pads run unbroken, between its delimiters
    assert ids[start:start + per_image[0]] == [engine.vision.pad_id] * per_image[0]
    assert ids[start + per_image[0]] != engine.vision.pad_id
    sized = predictor.request([{"role": "user", "content": [
        {"type": "image", "image": COFFEE, "resized_height": 56, "resized_width": 84}, {"type": "text", "text": "?"}]}])
    assert engine.prompt_ids(sized).count(engine.vision.pad_id) == (56 // 28) * (84 // 28)


def test_bad_images_and_text_only_models_are_one_line(predictor: Any) -> None:
    from tunelab.inference.engines.types import RequestError
    from tunelab.inference.predictor import Predictor

    with pytest.raises(RequestError, match="remote URLs are not fetched"):
        predictor("?", images=["https://example.com/cat.png"])
    with pytest.raises(RequestError, match="image '.*nope.jpg' does not exist"):
        predictor("?", images=[str(IMAGES / "nope.jpg")])
    with pytest.raises(RequestError, match="cannot be decoded"):
        predictor("?", images=[str(IMAGES / "LICENSE")])
    with pytest.raises(RequestError, match="'stories260K' reads text only, and the messages hold 1 image"):
        Predictor(max_new_tokens=2)("?", images=[COFFEE])


def test_chat_attaches_an_image_to_the_next_question(predictor: Any) -> None:
    from tunelab.inference.chat import run_chat

    lines = iter([f"/image {COFFEE}", "What is this?", "/image nope.jpg", "And this?", "/exit"])
    screen = io.StringIO()
    history = run_chat(predictor, input_fn=lambda _: next(lines), output=screen)
    assert "Attached" in screen.getvalue() and "error: image 'nope.jpg' does not exist" in screen.getvalue()
    assert history[0]["content"][0] == {"type": "image", "image": COFFEE}  # the image stays with its question
    assert history[1]["content"] == predictor("What is this?", images=[COFFEE])
    assert history[2] == {"role": "user", "content": "And this?"}  # the bad image was not attached


def test_chat_query_with_image_flag() -> None:
    result = CliRunner().invoke(app, ["chat", "--model", TINY_VL, "--query", "What is it?", "--image", CAT,
                                      "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    text_only = CliRunner().invoke(app, ["chat", "--query", "What is it?", "--image", CAT])
    assert text_only.exit_code == 2 and "reads text only" in text_only.stderr


def test_llamafactory_image_rows_and_their_errors(tmp_path: Path) -> None:
    from tunelab.data.registry import load_dataset_rows

    loaded = load_dataset_rows("vl_demo", EXAMPLES, "sft")
    first = loaded.rows[0]
    assert first["messages"][0]["content"] == "<image>What is in this picture?"
    assert first["images"] == [str(EXAMPLES / "vl_demo_images" / "coffee.jpg")]  # relative to the data file
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hello"}],
            "images": [COFFEE]}
    bad.write_text("\n".join(json.dumps(r) for r in [good, {**good, "images": [COFFEE, CAT]},
                                                      {**good, "images": ["missing.png"]}]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'images': 1 <image> placeholder\(s\) in the text "
                                        r"but 2 image\(s\)"):
        load_dataset_rows(str(bad), tmp_path, "sft")
    skipped = load_dataset_rows(str(bad), tmp_path, "sft", skip_invalid=True).skipped.as_dict()
    assert skipped["images do not match their placeholders"]["count"] == 1
    assert "image 'missing.png' does not exist" in skipped["image not found"]["examples"][0]


def test_predict_reads_the_images_column(tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(app, ["predict", "vl_demo", "--dataset-dir", str(EXAMPLES), "--model", TINY_VL,
                                      "--max-samples", "3", "--max-new-tokens", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"] == "What is in this picture?"
    assert rows[0]["messages"][0]["content"][0]["image"].endswith("coffee.jpg")
    text_only = CliRunner().invoke(app, ["predict", "vl_demo", "--dataset-dir", str(EXAMPLES), "--max-samples", "1",
                                         "--output", str(out)])
    assert text_only.exit_code == 2 and "reads text only" in text_only.stderr


def test_the_server_takes_openai_image_parts(load_tokenizer: Any) -> None:
    pytest.importorskip("fastapi")
    import httpx
    from test_serve import TIMEOUT, Server

    from tunelab.inference.engines.hf import HFEngine
    from tunelab.serve.app import create_app

    engine = HFEngine(TINY_VL)
    server = Server(create_app(engine))
    try:
        def ask(url: str) -> httpx.Response:
            content = [{"type": "text", "text": "What is in this picture?"},
                       {"type": "image_url", "image_url": {"url": url}}]
            return httpx.post(f"{server.url}/v1/chat/completions", timeout=TIMEOUT, json={
                "model": engine.base_name, "messages": [{"role": "user", "content": content}], "max_tokens": 3})
        answer = ask(_data_url(COFFEE))
        assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] > 16
        remote = ask("https://example.com/cat.png")
        assert remote.status_code == 400 and "remote URLs are not fetched" in remote.json()["error"]["message"]
    finally:
        server.stop()


def test_images_need_a_vision_model_in_the_python_api_too() -> None:
    from tunelab.data.images import ImageError, load_image

    with pytest.raises(ImageError):
        load_image("data:image/png;base64,@@@")
    assert isinstance(ImageError("x"), TunelabError)
