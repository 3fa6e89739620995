"""tunelab serve against real clients (the official `openai` package and raw HTTP), on 127.0.0.1 only: the
embedded model with the demo adapter and a second adapter side by side, a tool-calling round trip on a tiny
model that learned one, the bad-request table, API keys, 100 concurrent streams, a disconnect, a full queue."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

QUERY = "Tell me a story about a cat."
TIMEOUT = 120


class Server:
    """A uvicorn server in a thread on a free loopback port; stopped when the test ends."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                break
            threading.Event().wait(0.05)
        assert self.server.started, "server did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = "none") -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _second_adapter(source: Path, target: Path) -> Path:
    """Another adapter of the same base: the demo adapter with its LoRA B matrices negated."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint-*", "*.png", "*.jsonl"))
    weights = load_file(target / "adapter_model.safetensors")
    save_file({k: -v if "lora_B" in k else v for k, v in weights.items()}, target / "adapter_model.safetensors")
    return target


@pytest.fixture(scope="module")
def served(demo_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any, list[str]]]:
    from tunelab.inference.engines.hf import HFEngine
    from tunelab.serve.app import ServeSettings, create_app

    other = _second_adapter(demo_adapter, tmp_path_factory.mktemp("adapters") / "negated")
    engine = HFEngine(None, {"demo": str(demo_adapter), "negated": str(other)})
    lines: list[str] = []
    server = Server(create_app(engine, ServeSettings(max_concurrency=32), log=lines.append))
    yield server, engine, lines
    server.stop()


def _greedy(client: Any, model: str, query: str = QUERY, **extra: Any) -> Any:
    extra = {"max_tokens": 40, **extra}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": query}],
                                          temperature=0, **extra)


def test_models_lists_the_base_and_each_adapter(served: tuple[Server, Any, list[str]]) -> None:
    server, engine, _ = served
    listed = {model.id: model for model in server.client().models.list().data}
    assert set(listed) == {"stories260K", "demo", "negated"}
    assert httpx.get(f"{server.url}/health").json()["models"] == list(listed)


def test_greedy_answer_equals_tunelab_chat(served: tuple[Server, Any, list[str]], demo_adapter: Path) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    server, engine, lines = served
    reply = server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": QUERY}], temperature=0, max_tokens=256)
    result = CliRunner().invoke(app, ["chat", "--adapter", str(demo_adapter), "--query", QUERY])
    assert result.exit_code == 0, result.output
    assert reply.choices[0].message.content == result.stdout.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert any(line.startswith("200 POST /v1/chat/completions model=demo") for line in lines)


def test_usage_counts_are_the_tokenizers(served: tuple[Server, Any, list[str]]) -> None:
    from tunelab.data.templates import render

    server, engine, _ = served
    reply = _greedy(server.client(), "demo", max_tokens=None, max_completion_tokens=7)  # the newer name
    tokenizer = engine.served("demo").tokenizer
    prompt = render(tokenizer, [{"role": "user", "content": QUERY}], add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 7
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_streaming_joins_to_the_same_text_with_usage(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served
    whole = _greedy(server.client(), "demo")
    chunks = list(server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": QUERY}], temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_the_answer(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served
    text = _greedy(server.client(), "demo").choices[0].message.content
    words = text.split()
    stop = words[len(words) // 2]
    cut = _greedy(server.client(), "demo", stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[:text.index(stop)].strip()


def test_n_and_seed_reproduce(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served

    def sample(seed: int) -> list[str]:
        reply = server.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": QUERY}], temperature=1.0, max_tokens=20, n=3,
            seed=seed)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        return [c.message.content for c in reply.choices]

    first, again, other = sample(1), sample(1), sample(2)
    assert first == again
    assert len(set(first)) > 1 and first != other


def test_adapters_never_leak_into_each_others_answers(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served
    models = ["stories260K", "demo", "negated"]
    alone = {model: _greedy(server.client(), model).choices[0].message.content for model in models}
    assert len(set(alone.values())) == 3, alone  # three different models
    answers: dict[int, tuple[str, str]] = {}

    def ask(index: int) -> None:
        model = models[index % 3]
        answers[index] = (model, _greedy(server.client(), model).choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(answers) == 12
    assert all(text == alone[model] for model, text in answers.values())


def test_text_completions(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served
    reply = server.client().completions.create(model="stories260K", prompt="Once upon a time", max_tokens=12,
                                               temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.choices[0].text
    streamed = server.client().completions.create(model="stories260K", prompt="Once upon a time", max_tokens=12,
                                                  temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_a_hundred_concurrent_streams_get_their_solo_text(served: tuple[Server, Any, list[str]]) -> None:
    server, _, _ = served
    queries = [f"Tell me a story about {name}." for name in ("a cat", "a dog", "Lily", "the sun", "a boat")]
    solo = {q: _greedy(server.client(), "demo", q, max_tokens=24).choices[0].message.content for q in queries}

    async def one(client: httpx.AsyncClient, query: str) -> str:
        body = {"model": "demo", "messages": [{"role": "user", "content": query}], "temperature": 0,
                "max_tokens": 24, "stream": True}
        pieces = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    pieces += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
        return "".join(pieces)

    async def all_of_them() -> list[str]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
            return await asyncio.gather(*(one(client, queries[i % 5]) for i in range(100)))

    texts = asyncio.run(all_of_them())
    assert texts == [solo[queries[i % 5]] for i in range(100)]
