"""Decoding steps replayed as one CUDA graph.

At batch 1 a decode step of LLaMA-7B is ~2,000 small kernels; launched one by one from Python they
take ~65 ms on an H200, twenty times the ~3 ms the weights need to stream through memory
(tools/gpu_check.py). Captured once per request as a CUDA graph, a step is one launch.
`Transformer.decode_step` gives the step fixed shapes (the new token is written at a slot held in a
device tensor, attention runs over every slot with a mask), so the captured graph stays valid while
the slot advances. CPU decoding never comes here.
"""

from __future__ import annotations

import os
import threading

import torch

from ibllm_agent.llama.model import KVCache, Transformer

_LOCK = threading.Lock()
"""One capture or replay at a time in the process: work another thread puts on the GPU while a graph is
being captured invalidates the capture (CUDA's legacy default stream synchronises with every stream)."""

MIN_STEPS = 8
"""Shorter generations decode eagerly: capturing costs about as much as a few eager steps."""


def enabled(device: torch.device, steps: int) -> bool:
    """Graphs on CUDA for generations of at least MIN_STEPS tokens, unless IBLLM_CUDA_GRAPHS=0."""
    return device.type == "cuda" and steps >= MIN_STEPS and os.environ.get("IBLLM_CUDA_GRAPHS", "1") != "0"


class GraphedDecodeStep:
    """`step(tokens (B,)) -> logits (B, vocab)` for the request of `cache`, continuing at `cache.length`.

    The logits tensor is overwritten by the next step: read (sample) it before calling again.
    """

    def __init__(self, llama: Transformer, cache: KVCache, adapter: list[torch.Tensor | None], *,
                 compile: bool | None = None):
        """`compile` (default: IBLLM_COMPILE_DECODE=1) fuses the step's small kernels with torch.compile
        before capturing it: fewer kernels per step, but a compilation per batch size and cache capacity."""
        device = cache.pad.device
        if compile is None:
            compile = os.environ.get("IBLLM_COMPILE_DECODE") == "1"
        decode = torch.compile(llama.decode_step, dynamic=False) if compile else llama.decode_step
        self.cache = cache
        for buffers in (cache.keys, cache.values):
            for b in buffers:
                b[:, :, cache.length:].zero_()  # never-written slots: masked, but must not be NaN
        self.tokens = torch.zeros(cache.batch, 1, dtype=torch.long, device=device)
        self.slot = torch.full((1,), cache.length, dtype=torch.long, device=device)
        adapter = list(adapter)

        def step():
            return decode(self.tokens, cache, adapter, self.slot)

        # kernels are chosen and workspaces allocated on a side stream before capture (CUDA's rule);
        # the warm-up writes slot `length`, which the first real step overwrites
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2 if compile else 1):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.eager = lambda: llama(self.tokens, cache, adapter, last_only=True)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with _LOCK, torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.logits = step()
        except RuntimeError:  # invalidated by other GPU work (e.g. another thread's encoder): stay eager
            self.graph = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.cache.capacity:
            raise ValueError(f"the request's cache is full ({self.cache.capacity} slots)")
        self.tokens.copy_(tokens.view(-1, 1))
        if self.graph is None:
            return self.eager()  # the cache advances itself
        with _LOCK:
            self.graph.replay()
            self.slot += 1
        self.cache.length += 1
        return self.logits
