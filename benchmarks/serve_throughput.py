"""Serving throughput: `tunelab serve` against `transformers serve` (plain and with continuous batching) and against
one-request-at-a-time generation (`tunelab serve --max-concurrency 1`), same model, same clients, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/serve_throughput.py                      # the embedded model, 1/8/32 clients
    .venv/bin/python benchmarks/serve_throughput.py --model PATH --requests 64 --max-tokens 128

What is measured, and why this way:

* Each server runs in its own process on 127.0.0.1 and is warmed up with one request. Clients are asyncio
  tasks over one httpx connection pool; each sends ``--requests`` / clients streaming chat requests in turn
  (greedy, ``max_tokens`` fixed), the prompts cycling through real story openings.
* Requests/s and output tokens/s over the whole wave (tokens: the served text re-tokenized with the model's
  tokenizer, so every server is counted the same way); time to first token is the time to the first chunk with
  text, median and p95 over the requests.
* Greedy outputs of every server are compared with tunelab's for the same prompts: a speed-up that changes
  the text does not count.
* The model folder is the embedded stories260K saved with its chat template (transformers serve reads the
  template from the tokenizer), or ``--model``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_count, cpu_model  # noqa: E402  (a sibling module)

PROMPTS = ["Tell me a story about a cat.", "Tell me a story about a dog.", "What did Lily find in the park?",
           "Tell me a story about the sun.", "Why was Tom sad?", "Tell me a story about a boat."]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _model_folder(model: str | None, where: Path) -> str:
    if model:
        return model
    from tunelab.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer("stories260K", "default")
    load_model("stories260K", tokenizer).save_pretrained(where / "stories260K-chat")
    tokenizer.save_pretrained(where / "stories260K-chat")
    return str(where / "stories260K-chat")


def _start(name: str, folder: str, port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if name.startswith("tunelab"):
        command = [str(BIN / "tunelab"), "serve", "--model", folder, "--port", str(port), "--quiet",
                   "--served-model-name", "m"]
        command += ["--max-concurrency", "1"] if name == "tunelab 1-at-a-time" else []
        model = "m"
    else:
        command = [str(BIN / "transformers"), "serve", folder, "--port", str(port), "--host", "127.0.0.1",
                   "--device", "cpu"] + (["--continuous-batching"] if "continuous" in name else [])
        model = folder
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, model
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{name} exited: {process.stderr.read()[-2000:] if process.stderr else ''}")
        time.sleep(0.1)
    raise SystemExit(f"{name} did not start")


async def _one(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> tuple[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True}
    started, first, pieces = time.perf_counter(), None, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.perf_counter()
                    pieces.append(text)
    return "".join(pieces).strip(), (first or time.perf_counter()) - started


async def _wave(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    per_client = max(1, requests // clients)
    results: list[tuple[int, str, float]] = []

    async def client_task(client: httpx.AsyncClient, index: int) -> None:
        for turn in range(per_client):
            number = index * per_client + turn
            text, ttft = await _one(client, model, PROMPTS[number % len(PROMPTS)], max_tokens)
            results.append((number, text, ttft))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        await _one(client, model, PROMPTS[0], 4)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client_task(client, i) for i in range(clients)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "results": sorted(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder with a chat template (default: the embedded model)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per wave")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--servers", default="tunelab,transformers serve,transformers serve continuous,"
                                              "tunelab 1-at-a-time")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        folder = _model_folder(args.model, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        table: dict[str, dict[int, dict]] = {}
        for name in args.servers.split(","):
            port = _free_port()
            process, model = _start(name, folder, port)
            try:
                for clients in (int(c) for c in args.clients.split(",")):
                    if name == "tunelab 1-at-a-time" and clients == 1:
                        continue
                    wave = asyncio.run(_wave(f"http://127.0.0.1:{port}", model, clients, args.requests,
                                             args.max_tokens))
                    texts = [text for _, text, _ in wave["results"]]
                    ttfts = sorted(ttft for _, _, ttft in wave["results"])
                    tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
                    table.setdefault(name, {})[clients] = {
                        "req_s": len(texts) / wave["seconds"], "tok_s": tokens / wave["seconds"],
                        "ttft_median": statistics.median(ttfts), "ttft_p95": ttfts[int(0.95 * (len(ttfts) - 1))],
                        "texts": texts}
                    print(f"{name:32s} {clients:3d} clients: {len(texts) / wave['seconds']:7.2f} req/s "
                          f"{tokens / wave['seconds']:8.1f} tok/s", file=sys.stderr, flush=True)
            finally:
                process.terminate()
                process.wait(timeout=60)
    print(f"\n{datetime.date.today()} · {cpu_model()} · {cpu_count()} CPUs · "
          f"model {args.model or 'stories260K (embedded)'} · {args.requests} requests per wave, max_tokens "
          f"{args.max_tokens}, greedy, streaming\n")
    print("| server | clients | req/s | output tok/s | TTFT median (s) | TTFT p95 (s) | tunelab req/s ÷ this | "
          "same greedy text |")
    print("|---|---|---|---|---|---|---|---|")
    for name, waves in table.items():
        for clients, row in waves.items():
            ours = table.get("tunelab", {}).get(clients)
            ratio = f"{ours['req_s'] / row['req_s']:.2f}x" if ours else "-"
            same = "yes" if ours and ours["texts"] == row["texts"] else \
                f"{sum(a == b for a, b in zip(ours['texts'], row['texts'], strict=False))}/{len(row['texts'])}" \
                if ours else "-"
            print(f"| {name} | {clients} | {row['req_s']:.2f} | {row['tok_s']:.1f} | {row['ttft_median']:.3f} | "
                  f"{row['ttft_p95']:.3f} | {ratio} | {same} |")


if __name__ == "__main__":
    main()
