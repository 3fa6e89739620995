"""`tunelab webui`: every flag checked (the extra installed, the port free, a password wherever the page is reachable
from other machines), then the page starts."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from tunelab.console import console
from tunelab.errors import TunelabError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_webui(host: str, port: int, share: bool, password: str | None, public: bool, outputs: str) -> None:
    if importlib.util.find_spec("gradio") is None:
        raise TunelabError("the web UI needs Gradio: pip install 'tunelab[webui]'")
    if not 1 <= port <= 65535:
        raise TunelabError(f"--port must be in 1..65535, got {port}")
    if (share or host not in LOOPBACK) and not public:
        raise TunelabError(f"--host {host}{' --share' if share else ''} makes the page reachable from other machines, "
                           "which can start trainings and read files here; add --public to confirm (and --password)")
    if password is not None and not password.strip():
        raise TunelabError("--password is empty")
    if Path(outputs).exists() and not Path(outputs).is_dir():
        raise TunelabError(f"--outputs '{outputs}' is a file; give the folder that holds (or will hold) the runs")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed page's port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise TunelabError(f"cannot listen on {host}:{port}: {error.strerror}; pick another --port") from None


def webui_command(host: str, port: int, share: bool, password: str | None, user: str, public: bool,
                  outputs: str) -> None:
    check_webui(host, port, share, password, public, outputs)
    from tunelab.webui.app import launch

    if public and password is None:
        console.print("[bold yellow]warning[/bold yellow] the page is reachable from other machines without a "
                      "password (--password)")
    console.print(f"[bold]webui[/bold] http://{host}:{port}  (runs under {Path(outputs).resolve()}; Ctrl-C stops "
                  "the page, not the trainings it started)")
    launch(host, port, share, (user, password) if password else None, Path.cwd(), Path(outputs))
