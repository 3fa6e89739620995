"""Concurrent requests become batches: a worker thread takes up to ``max_concurrency`` waiting requests of one
served model at a time and runs them through the engine together (padded dynamic batching), oldest model
first. Requests over ``max_queue`` waiting are refused at once (the server answers 429), and a request whose
client went away is dropped before it runs, or ends at the next step while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from tunelab.inference.engines.base import Engine
from tunelab.inference.engines.types import Completion, Request, Sink


class QueueFull(Exception):
    """More requests are waiting than the server takes."""


class AsyncSink(Sink):
    """Hands a row's text and its end to an asyncio queue of the server's event loop, as (index, kind, value);
    the ``n`` choices of one request share a queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int = 0) -> None:
        super().__init__()
        self.loop, self.events, self.index = loop, events, index

    def _put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, value))

    def text(self, piece: str) -> None:
        self._put("text", piece)

    def done(self, completion: Completion) -> None:
        self._put("done", completion)

    def failed(self, error: BaseException) -> None:
        self._put("error", error)


@dataclass
class _Job:
    request: Request
    sink: AsyncSink
    model: str


class Scheduler:
    """See the module docstring. ``start`` runs the worker; ``stop`` lets the running batch end, then returns."""

    def __init__(self, engine: Engine, max_concurrency: int = 32, max_queue: int = 256) -> None:
        self.engine, self.max_concurrency, self.max_queue = engine, max_concurrency, max_queue
        self._waiting: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="tunelab-scheduler", daemon=True)
        self.running = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout=60)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, requests: list[Request], sinks: list[AsyncSink]) -> None:
        """Queue checked requests (the choices of one API request, all or none); QueueFull when that would make
        more than ``max_queue`` wait."""
        with self._wake:
            if len(self._waiting) + len(requests) > self.max_queue:
                raise QueueFull
            for request, sink in zip(requests, sinks, strict=True):
                self._waiting.append(_Job(request, sink, self.engine.served(request.model).name))
            self._wake.notify()

    def _next_batch(self) -> list[_Job]:
        """Up to max_concurrency waiting jobs of the oldest job's model; cancelled ones are answered and dropped."""
        with self._wake:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return []
            model = self._waiting[0].model
            batch, kept = [], deque()
            while self._waiting:
                job = self._waiting.popleft()
                if job.sink.cancelled.is_set():
                    job.sink.done(Completion("", 0, 0, "cancelled", model=job.model))
                elif job.model == model and len(batch) < self.max_concurrency:
                    batch.append(job)
                else:
                    kept.append(job)
            self._waiting = kept
            self.running = len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._stopping:
                    return
                continue
            try:
                self.engine.run_batch([job.request for job in batch], [job.sink for job in batch])
            except BaseException as error:  # every waiting client gets the failure, the server keeps serving
                for job in batch:
                    job.sink.failed(error)
            finally:
                self.running = 0
