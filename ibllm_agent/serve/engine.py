"""The serving engine: continuous batching of many requests over one model.

    engine = Engine(model, max_batch=32, max_queue=256); engine.start()
    ticket = engine.submit(Request(prompt, feature, generation, visual_cache))
    for event in ticket: ...                 # or: async for event in ticket.events(): ...
    ticket.cancel()                          # a client that went away
    engine.stop(deadline_s=10)               # stop accepting, finish or cancel what runs, join the worker

One worker thread drives the model. At every step boundary it admits waiting requests into the running
batch (their visual queries are computed and their prompts prefilled there, grouped when they share
settings), runs one decoding step for every running request, hands each its new text, and lets finished
or cancelled requests go, freeing their rows of the KV cache at once. So a request never waits for a
batch to drain, and one that arrives mid-answer joins at the next token. The decoding itself is the
model's one decode path (`ImageBindLLM.start(..., into=decoder)` and `Decoder.step`), so a served
greedy answer is the in-process answer.

A request is checked before it queues (`submit`), a group that fails to join is retried request by
request, and a failure is reported to its own request only: one bad request never fails another.
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
from ibllm_agent.generation import Decoder
from ibllm_agent.grammar import ConstraintError
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
        self.submitted = time.monotonic()
        self._lock = threading.Condition()
        self._pending: collections.deque[Event] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    def cancel(self) -> None:
        """Stop generating for this request; the engine frees its place at the next step boundary."""
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
    emitted: int = 0  # tokens reported so far


class Engine:
    """Continuous batching over one `ImageBindLLM` (see the module docstring)."""

    def __init__(self, model, *, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: dict[int, _Running] = {}  # decoder row id -> its request
        self._decoder = Decoder(model.llama, model.tokenizer, dynamic=True)
        self._wake = threading.Condition()
        self._accepting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        """Decoding steps run so far."""

    # --- control -----------------------------------------------------------------------------------

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
            for ticket in [*self._waiting, *(r.ticket for r in self._running.values())]:
                ticket.cancel()
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, deadline_s))

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (False before `start`, after `stop`, or if it died)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> dict[str, int]:
        """For metrics: requests waiting, requests in the running batch, steps run."""
        return {"waiting": len(self._waiting), "running": len(self._running), "steps": self.steps}

    def submit(self, request: Request) -> Ticket:
        """Queue a request; raises QueueFullError or EngineStoppedError at once, ValueError for a feature that
        cannot condition an answer (checked here, before it can share a batch with anyone)."""
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

    # --- the worker --------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stop and not self._waiting and not self._running:
                    return
                admitted = self._take(self.max_batch - len(self._running))
            self._drop_cancelled()
            self._admit(admitted)
            if self._running:
                self._step()

    def _take(self, room: int) -> list[Ticket]:
        taken = []
        while self._waiting and len(taken) < room:
            ticket = self._waiting.popleft()
            if ticket.cancelled:
                ticket._push(Event(done=True, finish_reason="cancelled"))
            else:
                taken.append(ticket)
        return taken

    def _admit(self, tickets: list[Ticket]) -> None:
        """Join the new requests to the running batch, those with equal settings in one prefill."""
        groups: dict[tuple, list[Ticket]] = {}
        for ticket in tickets:
            r = ticket.request
            key = (r.generation.sampling, r.visual_cache) if r.generation.batchable else (id(ticket),)
            groups.setdefault(key, []).append(ticket)
        for group in groups.values():
            try:
                self._join(group)
            except Exception as exc:  # noqa: BLE001 - isolate: retry alone, so only the culprit fails
                if len(group) == 1:
                    logger.debug("request failed to start: %s", exc)
                    group[0]._push(Event(done=True, finish_reason="error", error=exc))
                    continue
                for ticket in group:
                    self._admit([ticket])

    def _join(self, group: list[Ticket]) -> None:
        first = group[0].request
        features = None
        if any(t.request.feature is not None for t in group):
            features = torch.stack([torch.as_tensor(t.request.feature).float() if t.request.feature is not None
                                    else torch.zeros(self.model.feature_dim) for t in group])
        with self.model.card.lock:
            _, rows, neighbors = self.model.start([t.request.prompt for t in group], features,
                                                  [t.request.generation for t in group], first.visual_cache,
                                                  into=self._decoder)
        for ticket, row, found in zip(group, rows, neighbors):
            self._running[row] = _Running(ticket)
            ticket._push(Event(prompt_tokens=len(self._decoder.rows[row].prompt), neighbors=found))

    def _drop_cancelled(self) -> None:
        for row, running in list(self._running.items()):
            if running.ticket.cancelled:
                self._decoder.remove(row)
                self._finish(row, running)

    def _step(self) -> None:
        try:
            with self.model.card.lock:
                deltas = self._decoder.step()
        except Exception as exc:  # noqa: BLE001 - the batch itself failed (e.g. out of memory): tell everyone
            logger.exception("decoding step failed")
            for row, running in list(self._running.items()):
                self._decoder.remove(row)
                self._decoder.forget(row)
                running.ticket._push(Event(done=True, finish_reason="error", error=exc))
                del self._running[row]
            return
        self.steps += 1
        for row, delta in deltas.items():
            running = self._running.get(row)
            if running is None:
                continue
            if delta:
                running.ticket._push(Event(delta=delta))
            if self._decoder.rows[row].finish:
                self._finish(row, running)

    def _finish(self, row: int, running: _Running) -> None:
        state = self._decoder.rows[row]
        error = ConstraintError(state.error) if state.finish == "error" else None
        running.ticket._push(Event(done=True, finish_reason=state.finish, prompt_tokens=len(state.prompt),
                                   completion_tokens=len(state.ids), error=error))
        del self._running[row]
        self._decoder.forget(row)
