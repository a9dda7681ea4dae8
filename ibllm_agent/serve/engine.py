"""INTERIM ENGINE (round-robin, no batching): a stand-in with the interface of the continuous-batching engine
that the lead engineer writes on main; at merge, main's `serve/engine.py` replaces this file whole.

    engine = Engine(model, max_batch=32, max_queue=256); engine.start()
    ticket = engine.submit(Request(prompt, feature, generation, visual_cache))
    for event in ticket: ...                 # or: async for event in ticket.events(): ...
    ticket.cancel()                          # a client that went away
    engine.stop(deadline_s=10)               # stop accepting, finish or cancel what runs, join the worker

One worker thread drives the model. Each admitted request gets its own `Decoder` from the model's one decode
path (`ImageBindLLM.start`), and the worker steps the running decoders round-robin, one token each, under
`model.card.lock`. So answers are the in-process answers and requests interleave token by token, but each
step computes one row: throughput is that of batch 1 (the real engine decodes the running rows together).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch

from ibllm_agent.cache.base import Neighbor
from ibllm_agent.params import GenerationParams, VisualCacheParams

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue of waiting requests is full; try again shortly (HTTP 429)."""


class EngineStoppedError(RuntimeError):
    """The engine is stopping or stopped and takes no new requests (HTTP 503)."""


@dataclass(frozen=True)
class Request:
    """What one answer needs: the formatted prompt and the fused feature of its media (None: text only)."""

    prompt: str
    feature: torch.Tensor | None
    generation: GenerationParams = field(default_factory=GenerationParams)
    visual_cache: VisualCacheParams = field(default_factory=VisualCacheParams)


@dataclass
class Event:
    """Progress of one request. The first event has its prompt size and cache neighbours; the last has
    `done`, the finish reason ("stop", "length", "cancelled" or "error") and the token counts."""

    delta: str = ""
    done: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    neighbors: list[Neighbor] = field(default_factory=list)
    error: BaseException | None = None


class Ticket:
    """A submitted request: its events, readable from a thread (iterate) or from asyncio (`events()`)."""

    def __init__(self, request: Request):
        self.request = request
        self.cancelled = False
        self._lock = threading.Condition()
        self._pending: collections.deque[Event] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    def cancel(self) -> None:
        """Stop generating for this request; the engine frees its place at the next step."""
        self.cancelled = True

    def _push(self, event: Event) -> None:  # from the worker thread
        with self._lock:
            if self._loop is None:
                self._pending.append(event)
                self._lock.notify()
                return
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except RuntimeError:  # the consumer's event loop is gone: nobody listens any more
                self.cancelled = True

    def __iter__(self) -> Iterator[Event]:
        while True:
            with self._lock:
                while not self._pending:
                    self._lock.wait()
                event = self._pending.popleft()
            yield event
            if event.done:
                return

    async def events(self) -> AsyncIterator[Event]:
        with self._lock:
            self._loop, self._queue = asyncio.get_running_loop(), asyncio.Queue()
            while self._pending:
                self._queue.put_nowait(self._pending.popleft())
        while True:
            event = await self._queue.get()
            yield event
            if event.done:
                return


@dataclass
class _Running:
    ticket: Ticket
    decoder: object  # the request's own generation.Decoder
    steps: Iterator[list[str]]


class Engine:
    """Round-robin decoding of the running requests over one `ImageBindLLM` (see the module docstring)."""

    def __init__(self, model, *, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: list[_Running] = []
        self._wake = threading.Condition()
        self._accepting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    def start(self) -> Engine:
        if self._thread is None:
            self._accepting = True
            self._thread = threading.Thread(target=self._work, name="ibllm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, deadline_s: float = 10.0) -> None:
        """Take no new requests; let the queued and running ones finish until `deadline_s`, then cancel the
        rest (their final event says "cancelled") and end the worker."""
        with self._wake:
            self._accepting = False
            self._wake.notify()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and (self._waiting or self._running):
            time.sleep(0.01)
        with self._wake:
            for ticket in [*self._waiting, *(r.ticket for r in self._running)]:
                ticket.cancel()
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, deadline_s))

    @property
    def stats(self) -> dict[str, int]:
        """For metrics: requests waiting, requests running, steps run."""
        return {"waiting": len(self._waiting), "running": len(self._running), "steps": self.steps}

    def submit(self, request: Request) -> Ticket:
        """Queue a request; raises QueueFullError or EngineStoppedError at once, ValueError for a feature that
        cannot condition an answer."""
        if request.feature is not None:
            feature = torch.as_tensor(request.feature).float()
            if feature.ndim != 1 or feature.numel() != self.model.feature_dim or not bool(torch.isfinite(feature).all()):
                raise ValueError(f"the feature must be one finite vector of {self.model.feature_dim} values, got "
                                 f"shape {list(feature.shape)}")
        ticket = Ticket(request)
        with self._wake:
            if not self._accepting:
                raise EngineStoppedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (max_queue={self.max_queue})")
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stop and not self._waiting and not self._running:
                    return
                admitted = []
                while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                    admitted.append(self._waiting.popleft())
            for ticket in admitted:
                self._admit(ticket)
            for running in list(self._running):
                self._step(running)

    def _admit(self, ticket: Ticket) -> None:
        if ticket.cancelled:
            ticket._push(Event(done=True, finish_reason="cancelled"))
            return
        r = ticket.request
        try:
            with self.model.card.lock:
                decoder, neighbors = self.model.start([r.prompt], r.feature, r.generation, r.visual_cache)
        except Exception as exc:  # noqa: BLE001 - reported to this request only
            ticket._push(Event(done=True, finish_reason="error", error=exc))
            return
        self._running.append(_Running(ticket, decoder, iter(decoder)))
        ticket._push(Event(prompt_tokens=len(decoder.prompts[0]), neighbors=neighbors[0]))

    def _step(self, running: _Running) -> None:
        ticket, decoder = running.ticket, running.decoder
        prompt_tokens = len(decoder.prompts[0])
        if ticket.cancelled:  # dropping the decoder frees its KV cache
            self._running.remove(running)
            ticket._push(Event(done=True, finish_reason="cancelled", prompt_tokens=prompt_tokens,
                               completion_tokens=len(decoder.rows[0].ids)))
            return
        try:
            with self.model.card.lock:
                deltas = next(running.steps, None)
        except Exception as exc:  # noqa: BLE001 - one request's failure never fails another
            logger.debug("decoding failed", exc_info=True)
            self._running.remove(running)
            ticket._push(Event(done=True, finish_reason="error", error=exc))
            return
        self.steps += 1
        if deltas is not None and deltas[0]:
            ticket._push(Event(delta=deltas[0]))
        if deltas is None or decoder.rows[0].finish:
            self._running.remove(running)
            _, ids, finish = decoder.results()[0]
            ticket._push(Event(done=True, finish_reason=finish, prompt_tokens=prompt_tokens,
                               completion_tokens=len(ids)))
