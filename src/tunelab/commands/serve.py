"""`tunelab serve`: load the engine (or a reward model for /v1/score), print where it listens and what it serves,
run the OpenAI-compatible app under uvicorn until Ctrl-C (drains, exit 130) or SIGTERM."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import socket
from collections.abc import Iterator
from typing import Any

from tunelab import signals
from tunelab.commands.flags import RagFlags
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.serve.config import ServeConfig

ATTENTION = ("auto", "sdpa", "fa2", "eager", "disabled")


def load_options(config: ServeConfig) -> Any:
    from tunelab.inference.loading import LoadOptions

    return LoadOptions(trust_remote_code=config.trust_remote_code, revision=config.revision,
                       flash_attn=config.flash_attn)


def check_serve(config: ServeConfig) -> tuple[str, dict[str, str], bool]:
    """Everything that can fail before a model loads: extras installed, adapters and model present, names, the
    port free. Returns (base model, {name: adapter}, reward model?)."""
    from tunelab.inference.engines.hf import adapter_names
    from tunelab.inference.loading import check_inference_sources
    from tunelab.models.sources import is_reward_model

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise TunelabError(f"serving needs {' and '.join(missing)}: pip install 'tunelab[serve]'")
    if config.flash_attn not in ATTENTION:
        raise TunelabError(f"flash_attn '{config.flash_attn}' is not one of {', '.join(ATTENTION)}")
    from tunelab.inference.engines.types import RequestError

    try:
        config.budget().check()
    except RequestError as error:
        raise TunelabError(f"{error.param}: {error}") from None
    adapters = adapter_names(config.adapter)
    first = next(iter(adapters.values()), None)
    base = check_inference_sources(config.model, first, use=None)
    reward = is_reward_model(base, first)
    if reward and len(adapters) > 1:
        raise TunelabError("a reward model is served on its own (/v1/score); give one --adapter")
    for path in list(adapters.values())[1 if reward else 0:]:
        check_inference_sources(config.model, path, use="generate")  # each must generate, on the same base
    if (config.served_model_name or base) in adapters:
        raise TunelabError(f"an adapter is named '{config.served_model_name or base}' like the base model; name it "
                           "with --adapter NAME=PATH")
    if config.engine == "vllm":
        if reward:
            raise TunelabError("engine vllm serves generation models; serve the reward model with --engine hf")
        from tunelab.inference.engines.vllm import check_vllm

        check_vllm()
    if config.rag_db is not None and reward:
        raise TunelabError("rag_db retrieves clues for generation; a reward model only scores (/v1/score)")
    rag_flags(config).check()
    _check_port(config.host, config.port)
    return base, adapters, reward


def rag_flags(config: ServeConfig) -> RagFlags:
    return RagFlags(config.rag_db, config.rag_collection, config.rag_top_k, config.rag_max_distance,
                    config.rag_template)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise TunelabError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port "
                               "(or stop what uses it)") from None


def _uvicorn_server() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but the signal that stopped it is not raised again inside the event loop (where
        asyncio turns it into a traceback); ``serve`` ends the command with that signal's exit code instead."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def build_engine(config: ServeConfig, adapters: dict[str, str], head: str = "causal_lm") -> Any:
    options = load_options(config)
    if config.engine == "vllm":
        from tunelab.inference.engines.vllm import VLLMEngine

        return VLLMEngine(config.model, adapters, config.template, options=options,
                          served_model_name=config.served_model_name,
                          tensor_parallel_size=config.tensor_parallel_size,
                          gpu_memory_utilization=config.gpu_memory_utilization, max_model_len=config.max_model_len)
    from tunelab.inference.engines.hf import HFEngine

    return HFEngine(config.model, adapters, config.template, options=options,
                    served_model_name=config.served_model_name, head=head)


def serve(config: ServeConfig) -> None:
    """Run the server in the foreground."""
    base, adapters, reward = check_serve(config)
    import uvicorn

    server_class = _uvicorn_server()
    from tunelab.serve.app import ServeSettings, create_app

    settings = ServeSettings(api_key=config.api_key, max_concurrency=config.max_concurrency,
                             max_queue=config.max_queue, budget=config.budget(), rag=rag_flags(config).retriever())
    log = None if config.quiet else (lambda line: console.print(line, markup=False, highlight=False))
    what = f"{base}" + (f" with {len(adapters)} adapter(s)" if adapters else "")
    with console.status(f"loading {what} ({config.engine}) ..."):
        engine = build_engine(config, adapters, head="score" if reward else "causal_lm")
        app, names = create_app(engine, settings, log=log), list(engine.models)
    server = server_class(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                         access_log=False, timeout_graceful_shutdown=30, lifespan="on"))
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
        host = f"[{config.host}]" if ":" in config.host else config.host
        console.print(f"[bold green]serving[/bold green] http://{host}:{port}/v1 "
                      f"({'score' if reward else config.engine}): {', '.join(names)}", highlight=False)
        if config.api_key:
            console.print("requests need Authorization: Bearer <api key>", highlight=False)
        console.print("Ctrl-C stops (requests in flight finish first)", highlight=False)

    server.startup = startup  # type: ignore[method-assign]
    server.run()  # Ctrl-C or SIGTERM: the requests in flight finish, then the command ends as interrupted (130)
    stopped_by = getattr(server, "_captured_signals", [])  # or terminated (143), as every tunelab command does
    if signal.SIGTERM in stopped_by:
        signals.STOP.requested.set()
        raise signals.Terminated()
    if stopped_by:
        raise KeyboardInterrupt
