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
    assert engine.vision.counts(image_refs(request.messages)) == per_image  # from the sizes alone, as encoding does
    assert ids.count(engine.vision.pad_id) == sum(per_image) and all(count > 0 for count in per_image)
    start = ids.index(engine.vision.pad_id)  # the first image's pads run unbroken, between its delimiters
    assert ids[start:start + per_image[0]] == [engine.vision.pad_id] * per_image[0]
    assert ids[start + per_image[0]] != engine.vision.pad_id
    sized = predictor.request([{"role": "user", "content": [
        {"type": "image", "image": COFFEE, "resized_height": 56, "resized_width": 84}, {"type": "text", "text": "?"}]}])
    assert engine.prompt_ids(sized).count(engine.vision.pad_id) == (56 // 28) * (84 // 28)
    small = predictor.request([{"role": "user", "content": [
        {"type": "image", "image": COFFEE, "max_pixels": 56 * 56}, {"type": "text", "text": "?"}]}])
    assert engine.prompt_ids(small).count(engine.vision.pad_id) <= 4 < per_image[0]  # at most 2 x 2 merged patches


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
                                                      {**good, "images": ["missing.png"]},
                                                      {**good, "images": [str(IMAGES / "LICENSE")]}]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'images': 1 <image> placeholder\(s\) in the text "
                                        r"but 2 image\(s\)"):
        load_dataset_rows(str(bad), tmp_path, "sft")
    skipped = load_dataset_rows(str(bad), tmp_path, "sft", skip_invalid=True).skipped.as_dict()
    assert skipped["images do not match their placeholders"]["count"] == 1
    assert "image 'missing.png' does not exist" in skipped["image not found or not an image"]["examples"][0]
    assert "line 4, field 'images': image" in skipped["image not found or not an image"]["examples"][1]
    assert "cannot be decoded" in skipped["image not found or not an image"]["examples"][1]


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


# --- training on images ----------------------------------------------------------------------------------------

def _vl_tokenizer() -> Any:
    from tunelab.models.loading import load_tokenizer
    from tunelab.models.vision import attach_image_tokens

    tokenizer = load_tokenizer(TINY_VL)
    assert attach_image_tokens(tokenizer, TINY_VL)
    return tokenizer


def test_image_tokens_never_carry_loss_and_are_never_cut() -> None:
    from tunelab.data.encoders import encode_sft
    from tunelab.data.images import ImageRef
    from tunelab.data.masking import IGNORE_INDEX
    from tunelab.data.registry import load_dataset_rows

    tokenizer = _vl_tokenizer()
    pad = tokenizer.image_tokens.pad_id
    row = load_dataset_rows("vl_demo", EXAMPLES, "sft").rows[-1]  # two images, then the question
    [encoded] = encode_sft(row, tokenizer)
    counts = tokenizer.image_tokens.counts([ImageRef(path) for path in row["images"]])
    positions = [i for i, token in enumerate(encoded.input_ids) if token == pad]
    assert len(positions) == sum(counts) == sum(encoded.image_tokens) and len(counts) == 2
    assert all(encoded.labels[i] == IGNORE_INDEX for i in positions)
    trained = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
                                if label != IGNORE_INDEX])
    assert trained == "The second: a cat.<|im_end|>"  # the answer and its end marker, nothing of the images
    assert len(encoded.offsets) == len(encoded.input_ids)  # inspect's view lines up with the expanded ids

    cut = encode_sft(row, tokenizer, cutoff_len=positions[-1])  # would end inside the second image
    assert cut[0].dropped and "cut through an image's tokens" in cut[0].dropped
    after = encode_sft(row, tokenizer, cutoff_len=positions[-1] + 3)  # ends after both images: text truncated
    assert not after[0].dropped and after[0].truncated and after[0].input_ids.count(pad) == sum(counts)


def test_a_text_model_refuses_image_data_before_loading(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(REPO / "examples" / "tiny_vl_lora_sft.yaml"),
                                      "model_name_or_path=stories260K", "template=default",
                                      f"output_dir={tmp_path / 'run'}", "--dry-run"])
    assert result.exit_code == 2
    assert "image(s) but the model reads text only" in result.stderr


@pytest.mark.slow
def test_lora_sft_on_images_learns_and_reloads_to_the_same_logits(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel

    from tunelab.config import load_config
    from tunelab.models.loading import load_model
    from tunelab.runs import read_metrics
    from tunelab.stages.sft import run_sft
    from tunelab.training.collate import ImageCollator

    cfg = load_config(REPO / "examples" / "tiny_vl_lora_sft.yaml",
                      [f"output_dir={tmp_path / 'run'}", f"dataset_dir={EXAMPLES}", "logging_steps=1",
                       "save_steps=1000", "report_to=none", "num_train_epochs=6"])
    result = run_sft(cfg)
    losses = [r["loss"] for r in read_metrics(result.output_dir) if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.97 * sum(losses[:3]) / 3, losses

    trained = result.model.eval()
    vision = [p for n, p in trained.named_parameters() if "visual" in n]
    assert vision and not any(p.requires_grad for p in vision)  # the vision tower stayed frozen
    assert not any("visual" in n and "lora_" in n for n, _ in trained.named_parameters())

    tokenizer = _vl_tokenizer()
    from tunelab.data.encoders import encode_sft
    from tunelab.data.registry import load_dataset_rows

    rows = load_dataset_rows("vl_demo", EXAMPLES, "sft").rows[-2:]
    samples = [{"input_ids": e.input_ids, "labels": e.labels, "image_files": row["images"]}
               for row in rows for e in encode_sft(row, tokenizer)]
    batch = ImageCollator(tokenizer.pad_token_id, tokenizer.image_tokens)(samples)
    batch.pop("labels")
    reloaded = PeftModel.from_pretrained(load_model(TINY_VL, tokenizer), str(result.output_dir)).eval()
    plain = load_model(TINY_VL, tokenizer).eval()
    with torch.no_grad():
        expected = trained(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected)
        assert not torch.allclose(plain(**batch).logits, expected)
        changed = dict(batch, pixel_values=torch.flip(batch["pixel_values"], dims=[0]))
        assert not torch.allclose(reloaded(**changed).logits, expected)  # the answer reads the images
    assert (result.output_dir / "preprocessor_config.json").is_file()


def test_image_content_parts_in_data_become_placeholders(tmp_path: Path) -> None:
    from tunelab.data.registry import load_dataset_rows

    data = tmp_path / "parts.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image", "image": COFFEE}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "Coffee."}]}) + "\n")
    [row] = load_dataset_rows(str(data), tmp_path, "sft").rows
    assert row["messages"][0]["content"] == "<image>What is it?" and row["images"] == [COFFEE]


def test_qwen2_5_vl_reads_and_trains_the_same_way(tmp_path: Path) -> None:
    """The Qwen2.5-VL shape (windowed vision attention) built the same way: answers follow the image, and a LoRA
    run on the image data trains and saves."""
    import importlib.util

    from tunelab.config import load_config
    from tunelab.inference.predictor import Predictor
    from tunelab.stages.sft import run_sft

    spec = importlib.util.spec_from_file_location("make_tiny_vl_model", REPO / "examples" / "make_tiny_vl_model.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    model = str(maker.build(tmp_path / "tiny-qwen2.5-vl", "qwen2_5_vl"))
    predictor = Predictor(model, max_new_tokens=5)
    assert type(predictor.engine.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert predictor("What is it?", images=[COFFEE]) != predictor("What is it?", images=[CAT])
    cfg = load_config(REPO / "examples" / "tiny_vl_lora_sft.yaml",
                      [f"model_name_or_path={model}", f"output_dir={tmp_path / 'run'}", f"dataset_dir={EXAMPLES}",
                       "num_train_epochs=1", "report_to=none"])
    result = run_sft(cfg)
    assert result.global_step == 5 and (result.output_dir / "adapter_model.safetensors").is_file()


def test_perplexity_reads_the_images(predictor: Any) -> None:
    """Perplexity on image data scores the answers given the images, as training does (not the bare pads)."""
    conversation = [{"role": "user", "content": [{"type": "image", "image": COFFEE},
                                                 {"type": "text", "text": "What is in this picture?"}]},
                    {"role": "assistant", "content": "A cup of coffee."}]
    swapped = [{**conversation[0], "content": [{"type": "image", "image": CAT}, conversation[0]["content"][1]]},
               conversation[1]]
    [(coffee, tokens)], [(cat, same)] = (predictor.engine.conversation_losses([(c, None)], predictor.served)
                                         for c in (conversation, swapped))
    assert tokens == same == len(predictor.tokenizer("A cup of coffee.<|im_end|>", add_special_tokens=False)
                                 ["input_ids"])
    assert coffee != cat


def test_dpo_on_image_pairs_reads_the_prompts_images(tmp_path: Path) -> None:
    """Each pair's images go with both its chosen and its rejected row; a short DPO run prefers the chosen."""
    from tunelab.config import load_config
    from tunelab.data.encoders import encode_pair, pair_sample
    from tunelab.data.registry import load_dataset_rows
    from tunelab.runs import read_metrics
    from tunelab.stages.dpo import run_dpo
    from tunelab.training.collate import ImagePairCollator

    tokenizer = _vl_tokenizer()
    rows = load_dataset_rows("vl_dpo_demo", EXAMPLES, "preference").rows[:2]
    samples = [{**pair_sample(*encode_pair(row, tokenizer)), "image_files": row["images"]} for row in rows]
    batch = ImagePairCollator(tokenizer.pad_token_id, tokenizer.image_tokens)(samples)
    assert batch["image_grid_thw"].shape[0] == 4  # two prompts' images, for the chosen rows then the rejected
    assert int(batch["mm_token_type_ids"].sum()) == int((batch["input_ids"] == tokenizer.image_tokens.pad_id).sum())
    assert not (batch["completion_mask"].bool() & batch["mm_token_type_ids"].bool()).any()  # no image token scored

    cfg = load_config(REPO / "examples" / "tiny_vl_lora_dpo.yaml",
                      [f"output_dir={tmp_path / 'run'}", f"dataset_dir={EXAMPLES}", "logging_steps=1",
                       "report_to=none", "num_train_epochs=3"])
    result = run_dpo(cfg)
    losses = [r["loss"] for r in read_metrics(result.output_dir) if "loss" in r]
    assert losses[-1] < losses[0], losses
