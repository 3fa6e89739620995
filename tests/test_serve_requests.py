"""The server's edges, with a fake engine where timing must be under the test's control: every bad request is a
4xx with an OpenAI error body, API keys, a full queue (429), a client that disconnects; a tool-call round trip on
a tiny model that learned one (streamed too); the reward model's /v1/score; `tunelab serve`'s errors before any
model loads."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from test_serve import TIMEOUT, Server  # noqa: E402

from tunelab.inference.engines.base import Engine, ServedModel  # noqa: E402
from tunelab.inference.engines.types import Completion, Request, Sink  # noqa: E402

CHAT = "/v1/chat/completions"


class FakeEngine(Engine):
    """Answers "word word ..." one token per step, a few ms apart, until max_tokens or cancellation; records each
    completion. The interface contract without a model: the app and scheduler see only ``Engine``."""

    kind = "fake"

    def __init__(self, tokenizer: Any, context_length: int = 64) -> None:
        tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        self.models = {"fake": ServedModel("fake", None, tokenizer)}
        self.default_model, self.base_name, self.context_length = "fake", "fake", context_length
        self.finished: list[Completion] = []
        self.started = threading.Event()

    def stop_token_ids(self, model: str) -> list[int]:
        return []

    def run_batch(self, requests: list[Request], sinks: list[Sink]) -> list[Completion]:
        self.started.set()
        done: list[Completion | None] = [None] * len(requests)
        limits = [self.token_limit(r, self.prompt_ids(r)) for r in requests]
        step = 0
        while any(c is None for c in done):
            step += 1
            for index, (sink, limit) in enumerate(zip(sinks, limits, strict=True)):
                if done[index] is not None:
                    continue
                if sink.cancelled.is_set() or step > limit:
                    reason = "cancelled" if sink.cancelled.is_set() else "length"
                    done[index] = Completion("word " * (step - 1), 1, step - 1, reason, model="fake")
                    sink.done(done[index])
                else:
                    sink.text("word ")
            time.sleep(0.005)
        self.finished += [c for c in done if c is not None]
        return [c for c in done if c is not None]


@pytest.fixture
def fake(load_tokenizer: Any) -> FakeEngine:
    return FakeEngine(load_tokenizer("stories260K"), context_length=4096)


def _serve(engine: Any, **settings: Any) -> Server:
    from tunelab.serve.app import ServeSettings, create_app

    return Server(create_app(engine, ServeSettings(**settings)))


@pytest.fixture
def small_server(load_tokenizer: Any) -> Iterator[Server]:
    server = _serve(FakeEngine(load_tokenizer("stories260K"), context_length=64), max_body_bytes=20_000)
    yield server
    server.stop()


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}


BAD_REQUESTS = [
    # (case, method, path, body (str: raw), status, param, code)
    ("malformed JSON", "POST", CHAT, '{"model": "fake", "messages": [', 400, None, "invalid_json"),
    ("empty messages", "POST", CHAT, _chat(messages=[]), 400, "messages", None),
    ("messages missing", "POST", CHAT, {"model": "fake"}, 400, "messages", None),
    ("messages not a list", "POST", CHAT, _chat(messages="hi"), 400, "messages", None),
    ("unknown role", "POST", CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role",
     None),
    ("unknown model", "POST", CHAT, _chat(model="gpt-5"), 404, "model", "model_not_found"),
    ("prompt over the context", "POST", CHAT, _chat(messages=[{"role": "user", "content": "story " * 200}]), 400,
     "messages", "context_length_exceeded"),
    ("max_tokens 0", "POST", CHAT, _chat(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens negative", "POST", CHAT, _chat(max_tokens=-3), 400, "max_tokens", None),
    ("max_tokens past the context", "POST", CHAT, _chat(max_tokens=500), 400, "max_tokens",
     "context_length_exceeded"),
    ("temperature of a wrong type", "POST", CHAT, _chat(temperature="hot"), 400, "temperature", None),
    ("temperature out of range", "POST", CHAT, _chat(temperature=3), 400, "temperature", None),
    ("top_p zero", "POST", CHAT, _chat(top_p=0), 400, "top_p", None),
    ("n zero", "POST", CHAT, _chat(n=0), 400, "n", None),
    ("five stop strings", "POST", CHAT, _chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    ("logprobs", "POST", CHAT, _chat(logprobs=True), 400, "logprobs", None),
    ("tool_choice required", "POST", CHAT, _chat(tool_choice="required"), 400, "tool_choice", None),
    ("tools on a template without tool calls", "POST", CHAT,
     _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), 400, "tools", None),
    ("a body over the limit", "POST", CHAT, _chat(messages=[{"role": "user", "content": "x" * 30_000}]), 413,
     None, "body_too_large"),
    ("completions with echo", "POST", "/v1/completions", {"model": "fake", "prompt": "hi", "echo": True}, 400,
     "echo", None),
    ("completions without a prompt", "POST", "/v1/completions", {"model": "fake"}, 400, "prompt", None),
    ("score on a generation server", "POST", "/v1/score", {"prompt": "hi", "response": "yo"}, 400, "model",
     "model_not_supported"),
    ("no such endpoint", "GET", "/v1/nothing", None, 404, None, None),
    ("wrong method", "GET", CHAT, None, 405, None, None),
]


@pytest.mark.parametrize("case,method,path,body,status,param,code", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_with_an_openai_error_body(small_server: Server, case: str, method: str, path: str,
                                                          body: Any, status: int, param: str | None,
                                                          code: str | None) -> None:
    content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
    response = httpx.request(method, small_server.url + path, content=content, timeout=TIMEOUT,
                             headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert httpx.get(small_server.url + "/health").json()["status"] == "ok"  # still serving


def test_api_key_is_required_on_v1(fake: FakeEngine) -> None:
    server = _serve(fake, api_key="sekret")
    try:
        assert httpx.get(server.url + "/health").status_code == 200  # health stays open for probes
        assert httpx.get(server.url + "/v1/models").status_code == 401
        wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer sekre"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            server.client("other").models.list()
        reply = server.client("sekret").chat.completions.create(model="fake", messages=[{"role": "user",
                                                                                          "content": "hi"}],
                                                                 max_tokens=3)
        assert reply.choices[0].message.content == "word word word "
    finally:
        server.stop()


def _stream_in_thread(server: Server, results: list, max_tokens: int) -> threading.Thread:
    def work() -> None:
        with httpx.stream("POST", server.url + CHAT, json=_chat(max_tokens=max_tokens, stream=True),
                          timeout=TIMEOUT) as response:
            results.append((response.status_code, "".join(response.iter_lines())))

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _wait_for(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_full_queue_answers_429_with_retry_after(fake: FakeEngine) -> None:
    server = _serve(fake, max_concurrency=1, max_queue=1)
    try:
        results: list = []
        running = _stream_in_thread(server, results, 300)
        _wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 1)
        waiting = _stream_in_thread(server, results, 2)
        _wait_for(lambda: httpx.get(server.url + "/health").json()["waiting"] == 1)
        refused = httpx.post(server.url + CHAT, json=_chat(), timeout=TIMEOUT)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        running.join(TIMEOUT)
        waiting.join(TIMEOUT)
        assert [status for status, _ in results] == [200, 200] and all("[DONE]" in text for _, text in results)
    finally:
        server.stop()


def test_a_client_that_disconnects_frees_its_slot(fake: FakeEngine) -> None:
    server = _serve(fake, max_concurrency=1)
    try:
        with httpx.stream("POST", server.url + CHAT, json=_chat(max_tokens=4000, stream=True),
                          timeout=TIMEOUT) as response:
            lines = response.iter_lines()
            assert [next(lines) for _ in range(3)]  # the answer has started; then the client goes away
        reply = httpx.post(server.url + CHAT, json=_chat(max_tokens=2), timeout=TIMEOUT)
        assert reply.status_code == 200
        abandoned = fake.finished[0]
        assert abandoned.finish_reason == "cancelled" and abandoned.completion_tokens < 4000
    finally:
        server.stop()


def test_the_hf_engine_ends_a_cancelled_row_at_the_next_step() -> None:
    from tunelab.inference.predictor import Predictor

    engine = Predictor().engine

    class CancelAfterThree(Sink):
        pieces = 0

        def text(self, piece: str) -> None:
            self.pieces += 1
            if self.pieces == 3:
                self.cancelled.set()

    from tunelab.inference.engines.types import Sampling

    request = Request(messages=[{"role": "user", "content": "Tell me a long story."}],
                      sampling=Sampling(max_tokens=400, stop=()))
    other = Request(messages=[{"role": "user", "content": "Tell me a story."}], sampling=Sampling(max_tokens=20))
    cancelled, finished = engine.run_batch([request, other], [CancelAfterThree(), Sink()])
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 20
    assert finished.finish_reason in ("stop", "length")
    assert finished.text == engine.generate([other])[0].text  # its batch mate's leaving changed nothing


# --- tool calls --------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "content": '{"temperature": 21}'}
ANSWER = "It is 21 degrees in Paris."


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (the real minimind tokenizer and its tool-calling template) that learned one conversation:
    call get_weather for Paris, then answer from the tool's result."""
    import torch
    from conftest import FIXTURES_DIR
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES_DIR / "tokenizers" / "minimind")
    texts = [tokenizer.apply_chat_template(USER + [CALL], tools=TOOLS, tokenize=False),
             tokenizer.apply_chat_template(USER + [CALL, RESULT, {"role": "assistant", "content": ANSWER}],
                                           tools=TOOLS, tokenize=False)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sequences = [tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids for text in texts]
    for _ in range(150):
        for ids in sequences:
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("tools") / "weather"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tool_server(tool_model: Path) -> Iterator[Server]:
    from tunelab.inference.engines.hf import HFEngine
    from tunelab.serve.app import create_app

    server = Server(create_app(HFEngine(str(tool_model), served_model_name="weather")))
    yield server
    server.stop()


def test_a_tool_call_round_trip(tool_server: Server) -> None:
    client = tool_server.client()
    first = client.chat.completions.create(model="weather", messages=USER, tools=TOOLS, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    second = client.chat.completions.create(model="weather", temperature=0, tools=TOOLS, messages=[
        *USER, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": RESULT["content"]}])
    assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"
    plain = client.chat.completions.create(model="weather", messages=USER, tools=TOOLS, temperature=0,
                                           tool_choice="none")
    assert plain.choices[0].message.content.startswith("<tool_call>")  # "none": the text as written


def test_a_streamed_tool_call(tool_server: Server) -> None:
    chunks = list(tool_server.client().chat.completions.create(model="weather", messages=USER, tools=TOOLS,
                                                               temperature=0, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert "<tool_call>" not in content and content == ""
    assert [call.function.name for call in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- reward model ------------------------------------------------------------------------------------

def test_a_reward_model_is_served_on_v1_score(rm_adapter: Path) -> None:
    from tunelab.inference.reward import RewardScorer
    from tunelab.serve.app import create_app

    scorer = RewardScorer(adapter=str(rm_adapter))
    server = Server(create_app(scorer.engine))
    try:
        pair = {"prompt": "Tell me a story.", "response": "Once upon a time there was a cat."}
        one = httpx.post(server.url + "/v1/score", json=pair, timeout=TIMEOUT).json()
        assert one["model"] == "reward"
        assert one["data"][0]["score"] == pytest.approx(scorer(pair["prompt"], pair["response"]), abs=1e-5)
        batch = httpx.post(server.url + "/v1/score", json={"prompt": [pair["prompt"]] * 2,
                                                           "response": [pair["response"], "No."]}).json()
        assert [d["index"] for d in batch["data"]] == [0, 1]
        assert batch["data"][0]["score"] == pytest.approx(one["data"][0]["score"], abs=1e-5)
        refused = httpx.post(server.url + CHAT, json={"model": "reward", "messages": USER}, timeout=TIMEOUT)
        assert refused.status_code == 400 and "/v1/score" in refused.json()["error"]["message"]
    finally:
        server.stop()


# --- the command ---------------------------------------------------------------------------------------

def test_serve_errors_come_before_any_model_loads(tmp_path: Path, demo_adapter: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from tunelab.cli import app

    runner = CliRunner()
    vllm = runner.invoke(app, ["serve", "--engine", "vllm"])
    assert vllm.exit_code == 2 and "engine vllm" in vllm.output and "--engine hf" in vllm.output
    twice = runner.invoke(app, ["serve", "--adapter", f"a={demo_adapter}", "--adapter", f"a={demo_adapter}"])
    assert twice.exit_code == 2 and "two adapters are named 'a'" in twice.output
    missing = runner.invoke(app, ["serve", "--adapter", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.output
    config = tmp_path / "serve.yaml"
    config.write_text("model_name_or_path: stories260K\ninfer_backend: huggingface\nprot: 8001\n")
    typo = runner.invoke(app, ["serve", str(config)])
    assert typo.exit_code == 2 and "unknown key 'prot'" in typo.output and "did you mean 'port'" in typo.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(app, ["serve", "--port", str(port)])
    assert busy.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.output


def test_serve_config_takes_llamafactory_names_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.serve.config import load_serve_config

    config = tmp_path / "serve.yaml"
    config.write_text("model_name_or_path: stories260K\nadapter_name_or_path: a,b\ninfer_backend: huggingface\n")
    monkeypatch.setenv("API_PORT", "8011")
    monkeypatch.setenv("API_KEY", "k")
    loaded = load_serve_config(str(config), {"host": None, "quiet": False})
    assert (loaded.model, loaded.adapter, loaded.engine, loaded.port, loaded.api_key) == \
        ("stories260K", ["a", "b"], "hf", 8011, "k")
    assert load_serve_config(str(config), {"port": 9000}).port == 9000  # a flag wins
    assert load_serve_config(None, {"port": 0}).port == 0  # 0 is a value (any free port), not an unset flag


SERVE_EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "serve").glob("*"))


@pytest.mark.parametrize("path", SERVE_EXAMPLES, ids=[p.name for p in SERVE_EXAMPLES])
def test_serve_examples_are_valid(path: Path) -> None:
    from tunelab.serve.config import load_serve_config

    if path.suffix == ".py":
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    else:
        config = load_serve_config(str(path), {})
        # each serves an adapter, a model with a thinking budget, or answers from a RAG index
        assert config.adapter or config.budget().active or config.rag_db


def test_rows_joining_a_running_batch_get_their_solo_text() -> None:
    """Continuous batching: a group that joins after three steps (other prompt lengths, limits and stop strings)
    gets the text each request gets alone, and the whole-batch `generate` path agrees with both."""
    from tunelab.inference.engines.types import Sampling
    from tunelab.inference.predictor import Predictor

    engine = Predictor().engine
    assert engine._continuous

    def ask(text: str, **sampling: Any) -> Request:
        return Request(messages=[{"role": "user", "content": text}], sampling=Sampling(**sampling))

    first = [ask("Tell me a story about a cat.", max_tokens=30), ask("Why was Tom sad?", max_tokens=12)]
    later = [ask("What did Lily find in the park when she went out to play with her red ball?", max_tokens=25),
             ask("Tell me a story.", max_tokens=40, stop=("the",))]
    alone = [engine.generate([request])[0] for request in first + later]

    class Keep(Sink):
        completion: Completion | None = None

        def done(self, completion: Completion) -> None:
            self.completion = completion

    sinks = [Keep() for _ in first + later]
    steps = []

    def more(free: int) -> list[tuple[Request, Sink]]:
        steps.append(free)
        return list(zip(later, sinks[2:], strict=True)) if len(steps) == 3 else []

    engine.run_continuous(list(zip(first, sinks[:2], strict=True)), more, max_rows=8)
    joined = [sink.completion for sink in sinks]
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in joined] == \
        [(c.text, c.completion_tokens, c.finish_reason) for c in alone]
    whole = engine.run_batch(first + later, [Sink() for _ in sinks])
    assert [c.text for c in whole] == [c.text for c in alone]
    assert alone[3].finish_reason == "stop" and "the" not in alone[3].text.split()


@pytest.mark.parametrize("signal_name,exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_lets_the_request_in_flight_finish_then_exits(signal_name: str, exit_code: int) -> None:
    """The real command in its own process: the address on stderr, a stream in flight when the signal arrives
    still ends with [DONE], then the exit code of an interrupted (130) or terminated (143) command."""
    import os
    import re
    import signal
    import subprocess
    import sys

    command = [str(Path(sys.executable).parent / "tunelab"), "serve", "--port", "0"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert server.stderr is not None
        url = None
        for line in server.stderr:
            found = re.search(r"serving (http://127\.0\.0\.1:\d+)/v1 \(hf\): stories260K", line)
            if found:
                url = found.group(1)
                break
        assert url, "no address printed"
        body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200, "stream": True,
                "temperature": 0}
        with httpx.stream("POST", url + CHAT, json=body, timeout=TIMEOUT) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the answer has started
            server.send_signal(getattr(signal, signal_name))
            rest = list(lines)
        assert "data: [DONE]" in rest
        assert server.wait(timeout=TIMEOUT) == exit_code
        said = server.stderr.read()
        assert "Traceback" not in said and ("interrupted" if exit_code == 130 else "terminated") in said
    finally:
        if server.poll() is None:
            server.kill()


def test_chunked_bodies_extreme_settings_and_big_n(small_server: Server) -> None:
    """A body without Content-Length is held to the limit while read; a seed past 64 bits and a near-zero
    temperature are served, not a failed batch; n above max_queue on an idle server is served."""
    chunks = (part.encode() for part in ['{"model": "fake", "messages": [{"role": "user", "content": "',
                                         "x" * 30_000, '"}]}'])
    big = httpx.post(small_server.url + CHAT, content=chunks, timeout=TIMEOUT,
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    odd = httpx.post(small_server.url + CHAT, json=_chat(seed=2**70, temperature=1e-30, n=3), timeout=TIMEOUT)
    assert odd.status_code == 200 and len(odd.json()["choices"]) == 3


def test_score_requests_are_checked(load_tokenizer: Any) -> None:
    from tunelab.serve.app import create_app

    class FakeScorer(FakeEngine):
        can_generate, can_score = False, True

        def score(self, prompts: list, responses: list, model: str | None = None, batch_size: int = 8) -> list:
            return [float(len(str(p)) - len(str(r))) for p, r in zip(prompts, responses, strict=True)]

    server = Server(create_app(FakeScorer(load_tokenizer("stories260K"))))
    try:
        def post(body: dict) -> httpx.Response:
            return httpx.post(server.url + "/v1/score", json=body, timeout=TIMEOUT)

        assert post({"prompt": "ab", "response": "a"}).json()["data"][0]["score"] == 1.0
        messages = [{"role": "user", "content": "hi"}]
        assert len(post({"prompt": [messages, "x"], "response": ["a", "b"]}).json()["data"]) == 2
        for bad in ({"prompt": ["a", "b"], "response": "x"}, {"prompt": ["a"], "response": ["b", "c"]},
                    {"prompt": "", "response": "x"}, {"prompt": [{"role": "user"}], "response": "x"},
                    {"prompt": [], "response": []}):
            refused = post(bad)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt", bad
        assert post({"model": "other", "prompt": "a", "response": "b"}).status_code == 404
    finally:
        server.stop()


def test_a_thinking_budget_in_the_request_bounds_reasoning_content(tool_server: Server) -> None:
    """Budget forcing as request fields: the reasoning stops at its budget (the template opens thinking for it),
    the answer at its own, each returned apart; a bad budget is a 400 naming the field."""
    client = tool_server.client()
    reply = client.chat.completions.create(model="weather", messages=USER, temperature=0, max_tokens=64,
                                           extra_body={"max_thinking_tokens": 4, "max_answer_tokens": 3,
                                                       "num_wait": 1})
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    assert reasoning is not None and reply.choices[0].finish_reason in ("length", "stop")
    close = 4  # "\n</think>\n\n" in minimind's tokens: the budget's close, then at most 3 answer tokens
    assert reply.usage.completion_tokens <= 4 + close + 3 + len("Wait") + 2
    refused = httpx.post(tool_server.url + CHAT, json={"model": "weather", "messages": USER,
                                                       "max_thinking_tokens": -1}, timeout=TIMEOUT)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_thinking_tokens"


def test_chat_template_kwargs_reach_the_template_and_reasoning_comes_apart(tool_server: Server) -> None:
    """minimind's template opens a <think> block in the prompt when asked (open_thinking): the answer then
    starts inside it, and what the model writes there comes back as reasoning_content, not content."""
    client = tool_server.client()
    plain = client.chat.completions.create(model="weather", messages=USER, temperature=0, max_tokens=6)
    thinking = client.chat.completions.create(model="weather", messages=USER, temperature=0, max_tokens=6,
                                              extra_body={"chat_template_kwargs": {"open_thinking": True}})
    assert thinking.usage.prompt_tokens != plain.usage.prompt_tokens  # the template read the variable
    message = thinking.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    assert thinking.usage.completion_tokens > 0 and reasoning and not message.content
