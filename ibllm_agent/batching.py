"""Coalesce concurrent generation requests on one model into `generate_batch` calls.

LangChain's `batch()` and a server's worker threads send one conversation per call. A
`GenerationBatcher` (one per model, created on first use) queues them; its worker takes
every waiting request that shares the first one's sampling settings (up to `max_batch_size`) and
decodes them together, so eight threads cost about one decoding loop, not eight.

Requests with a seed and temperature > 0 run alone: their random stream must not depend on
which other requests happened to share the batch. A request is checked before it joins a batch, and
if a batch fails anyway each of its requests is run again alone, so one bad request fails only itself.
"""

from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ibllm_agent.params import GenerationParams, VisualCacheParams

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt: str
    feature: torch.Tensor | None  # (D,) or None for text only
    generation: GenerationParams
    visual_cache: VisualCacheParams
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Requests batch together only when these are equal (each row keeps its own grammar constraint)."""
        return self.generation.sampling, self.visual_cache


class GenerationBatcher:
    """A queue drained by one worker of a thread pool (joined cleanly at interpreter exit)."""

    def __init__(self, model: Any, max_batch_size: int = 8):
        self._model = weakref.ref(model)  # weak: the batcher must not keep a dropped model alive
        self.max_batch_size = max_batch_size
        self._pending: list[_Request] = []
        self._lock = threading.Lock()
        self._draining = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ibllm-generate")

    def submit(self, prompt: str, feature: torch.Tensor | None, generation: GenerationParams,
               visual_cache: VisualCacheParams) -> Future:
        """Queue one request; the future resolves to the model's `Generation`. A feature that cannot
        condition an answer is refused here, before it can share a batch with anyone."""
        if feature is not None:
            feature = torch.as_tensor(feature).float()
            if feature.ndim != 1 or not bool(torch.isfinite(feature).all()):
                raise ValueError(f"the feature must be one finite vector, got shape {list(feature.shape)}")
        request = _Request(prompt, feature, generation, visual_cache)
        with self._lock:
            self._pending.append(request)
            if not self._draining:
                self._draining = True
                self._executor.submit(self._drain)
        return request.future

    def _take_batch(self) -> list[_Request] | None:
        with self._lock:
            if not self._pending:
                self._draining = False
                return None
            first = self._pending[0]
            if not first.generation.batchable:
                batch = [first]
            else:
                batch = [r for r in self._pending if r.key == first.key][: self.max_batch_size]
            for request in batch:
                self._pending.remove(request)
            return batch

    def _drain(self) -> None:
        while (batch := self._take_batch()) is not None:
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            self._run_or_isolate(batch)

    def _run_or_isolate(self, batch: list[_Request]) -> None:
        """Run a batch; when it fails, run each request alone so the failure stays with its cause."""
        try:
            generations = self._run(batch)
        except BaseException as exc:  # every waiter must hear about the failure
            if len(batch) > 1:
                logger.debug("batch of %d failed (%s); running its requests one by one", len(batch), exc)
                for request in batch:
                    self._run_or_isolate([request])
                return
            batch[0].future.set_exception(exc)
        else:
            for request, generation in zip(batch, generations):
                request.future.set_result(generation)

    def _run(self, batch: list[_Request]) -> list:
        features = None
        if any(r.feature is not None for r in batch):
            dim = next(r.feature for r in batch if r.feature is not None).shape[-1]
            # a zero row means "no media" to the model, so text-only requests can share a batch
            features = torch.stack([r.feature if r.feature is not None else torch.zeros(dim) for r in batch])
        model = self._model()
        if model is None:
            raise RuntimeError("the model was released while requests were queued")
        with model.card.lock:
            return model.generate_batch([r.prompt for r in batch], features, [r.generation for r in batch],
                                        batch[0].visual_cache)


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BATCHERS_LOCK = threading.Lock()


def batcher_for(model: Any, max_batch_size: int = 8) -> GenerationBatcher:
    """The model's batcher (created on first use; `max_batch_size` of the first caller wins)."""
    with _BATCHERS_LOCK:
        if model not in _BATCHERS:
            _BATCHERS[model] = GenerationBatcher(model, max_batch_size)
        return _BATCHERS[model]
