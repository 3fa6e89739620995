"""Concurrent requests become batches: a worker thread hands the engine the waiting requests of the oldest
request's model (up to ``max_concurrency`` rows), and between steps tops the running batch up with newer
requests of the same model (continuous batching, where the engine supports it). When a request for another
model is the oldest waiting, the batch takes no more and drains, then that model's turn comes. Requests over
``max_queue`` waiting are refused at once (the server answers 429); a request whose client went away is dropped
before it runs, or ends at the next step while it runs.
"""

from __future__ import annotations

import asyncio
import functools
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
        self.finished = False

    def _put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, value))

    def text(self, piece: str) -> None:
        self._put("text", piece)

    def reasoning(self, piece: str) -> None:
        self._put("reasoning", piece)

    def done(self, completion: Completion) -> None:
        self.finished = True
        self._put("done", completion)

    def failed(self, error: BaseException) -> None:
        self.finished = True
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
        self._handed: list[_Job] = []  # the jobs of the engine's current batch

    @property
    def running(self) -> int:
        return sum(not job.sink.finished for job in list(self._handed))

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
        """Queue checked requests (the choices of one API request, all or none); QueueFull when ``max_queue``
        already wait."""
        with self._wake:
            if self._waiting and len(self._waiting) >= self.max_queue:  # counted in choices; an idle server takes any
                raise QueueFull
            for request, sink in zip(requests, sinks, strict=True):
                self._waiting.append(_Job(request, sink, self.engine.served(request.model).name))
            self._wake.notify()

    def _take(self, model: str | None, free: int) -> list[_Job]:
        """Up to ``free`` waiting jobs of ``model`` (None: of the oldest job's), oldest first; none while an older
        job of another model waits. Cancelled jobs are answered and dropped. Call with the lock held."""
        while self._waiting and self._waiting[0].sink.cancelled.is_set():  # so the oldest live job picks the model
            job = self._waiting.popleft()
            job.sink.done(Completion("", 0, 0, "cancelled", model=job.model))
        if not self._waiting or free <= 0:
            return []
        model = model or self._waiting[0].model
        taken, kept = [], deque()
        blocked = False
        while self._waiting:
            job = self._waiting.popleft()
            if job.sink.cancelled.is_set():
                job.sink.done(Completion("", 0, 0, "cancelled", model=job.model))
            elif job.model == model and len(taken) < free and not blocked:
                taken.append(job)
            else:
                blocked = blocked or job.model != model  # later jobs of this model wait behind another model's
                kept.append(job)
        self._waiting = kept
        self._handed = [job for job in self._handed if not job.sink.finished] + taken  # no growth under load
        return taken

    def _more(self, model: str, free: int) -> list[tuple[Request, Sink]]:
        with self._wake:
            return [(job.request, job.sink) for job in self._take(model, free)]

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                self._handed = []
                first = self._take(None, self.max_concurrency)
            if not first:
                continue
            model = first[0].model
            try:
                self.engine.run_continuous([(job.request, job.sink) for job in first],
                                           functools.partial(self._more, model), self.max_concurrency)
            except BaseException as error:  # every client of the batch gets the failure, the server keeps serving
                for job in list(self._handed):
                    if not job.sink.finished:
                        job.sink.failed(error)
