"""The parameter objects every layer passes whole: how to decode, how to use the visual cache, how to draw.

The defaults are the reference's (`generate(max_gen_len=256, temperature=0.1, top_p=0.75, cache_size=10,
cache_t=20, cache_weight=0.5)`) and are written only here. The CLI, the app, the chat model, the tools
and the server build one of each from their own settings and hand it down unchanged through the
batcher to the model, which is the only place the numbers are used.

Both validate on construction, so a bad value is refused where the user gave it, with the field named,
never deep inside a decoding step that other requests share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ibllm_agent.grammar import Constraint

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1_000


class ParamsError(ValueError):
    """A generation or visual-cache setting out of its range; the message names the field."""


def _number(owner: str, name: str, value: Any, *, low: float, high: float, integer: bool = False,
            low_open: bool = False) -> float | int:
    where = f"{owner}.{name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{where} must be a number, got {value!r}")
    if integer and (isinstance(value, float) and not value.is_integer()):
        raise ParamsError(f"{where} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bound = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
        raise ParamsError(f"{where} must be {bound}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class GenerationParams:
    """How to decode one answer. Requests with equal params may share a decoding batch."""

    max_tokens: int = 256
    """Most tokens to generate (the reference's `max_gen_len`)."""
    temperature: float = 0.1
    """0 = greedy (argmax); above it, softmax(logits / temperature) then top-p."""
    top_p: float = 0.75
    """Nucleus sampling mass."""
    seed: int | None = None
    """Seed of the sampling generator (temperature > 0); seeded requests decode alone, so their random
    stream does not depend on which other requests shared the batch."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included in it). A constrained answer ends where its grammar does."""
    constraint: Constraint | None = None
    """What the answer must match (`ibllm_agent.grammar.Constraint`: a JSON Schema, a regex, choices, a
    grammar): tokens it forbids are never sampled, EOS only once it is complete. None = free text."""

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "max_tokens", _number("generation", "max_tokens", self.max_tokens, low=0, high=1_000_000,
                                         integer=True))
        set_(self, "temperature", _number("generation", "temperature", self.temperature, low=0, high=100))
        set_(self, "top_p", _number("generation", "top_p", self.top_p, low=0, high=1, low_open=True))
        if self.seed is not None:
            set_(self, "seed", _number("generation", "seed", self.seed, low=0, high=2**63 - 1, integer=True))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in stop):
            raise ParamsError(f"generation.stop must be at most {MAX_STOP_STRINGS} strings of at most "
                              f"{MAX_STOP_CHARS} characters, got {self.stop!r}")
        set_(self, "stop", tuple(s for s in stop if s))
        if self.constraint is not None:
            from ibllm_agent.grammar import Constraint

            if not isinstance(self.constraint, Constraint):
                raise ParamsError(f"generation.constraint must be an ibllm_agent.grammar.Constraint or None, "
                                  f"got {type(self.constraint).__name__}")

    @property
    def sampling(self) -> GenerationParams:
        """These settings without the constraint: requests that agree on them may share a decoding batch,
        each row keeping its own grammar."""
        return self if self.constraint is None else replace(self, constraint=None)

    @property
    def batchable(self) -> bool:
        """May decode in a batch with other requests (greedy, or sampling without a seed)."""
        return self.seed is None or self.temperature == 0

    def updated(self, **changes: Any) -> GenerationParams:
        """A copy with the given fields changed; None values leave a field as it is."""
        return replace(self, **_known(self, changes))


@dataclass(frozen=True)
class VisualCacheParams:
    """The visual cache (paper §3.3): pull a feature toward its nearest cached image features."""

    enabled: bool | None = None
    """True / False, or None = whenever the model has a cache loaded (the reference's `knn=True`)."""
    size: int = 10
    """Neighbours retrieved (`cache_size`)."""
    t: float = 20.0
    """Softmax temperature over their similarities (`cache_t`)."""
    weight: float = 0.5
    """Share of the neighbours' blend in the final feature (`cache_weight`)."""

    def __post_init__(self):
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise ParamsError(f"visual_cache.enabled must be true, false or null, got {self.enabled!r}")
        set_ = object.__setattr__
        set_(self, "size", _number("visual_cache", "size", self.size, low=1, high=1_000, integer=True))
        set_(self, "t", _number("visual_cache", "t", self.t, low=0, high=1_000, low_open=True))
        set_(self, "weight", _number("visual_cache", "weight", self.weight, low=0, high=1))

    @classmethod
    def of(cls, value: VisualCacheParams | bool | dict | None) -> VisualCacheParams:
        """From what users pass: the object, a switch (True / False / None), or a dict of its fields."""
        if isinstance(value, cls):
            return value
        if value is None or isinstance(value, bool):
            return cls(enabled=value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ParamsError(f"visual_cache: unknown settings {unknown}; known: enabled, size, t, weight")
            return cls(**value)
        raise ParamsError(f"visual_cache must be true, false, null, a dict or VisualCacheParams, got {value!r}")

    def updated(self, **changes: Any) -> VisualCacheParams:
        return replace(self, **_known(self, changes))


MAX_DRAW_STEPS = 500
"""Most denoising steps one picture may take (diffusers' default is 20; 1,000 on a CPU is hours)."""
DRAW_SIDE_RANGE = (64, 2048)
"""Smallest and largest picture side in pixels (Stable unCLIP works at 768; 2048 needs ~40 GB in float16)."""
MAX_GUIDANCE = 50.0


@dataclass(frozen=True)
class DrawParams:
    """How to draw one picture (`ibllm_agent.image_generation`). Defaults are what the reference's
    `pipe(prompt=..., image_embeds=...)` call uses: diffusers' StableUnCLIPImg2ImgPipeline defaults."""

    steps: int = 20
    """Denoising steps (`num_inference_steps`); the toy decoder draws in one pass and ignores it."""
    guidance: float = 10.0
    """Classifier-free guidance scale (`guidance_scale`; <= 1 turns guidance off); ignored by the toy."""
    seed: int | None = None
    """Seed of the sampling noise (and of the toy's embedding noise); None = a fresh picture each time."""
    height: int | None = None
    """Picture height in pixels, a multiple of 8; None = the pipeline's own size (768 for Stable unCLIP,
    112 for the toy)."""
    width: int | None = None
    noise_level: int = 0
    """Noise added to the image embedding before drawing (unCLIP's `noise_level`, 0-999): more noise,
    more variation around the input. The toy adds noise of relative norm `2 * noise_level / 1000`."""

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "steps", _number("draw", "steps", self.steps, low=1, high=MAX_DRAW_STEPS, integer=True))
        set_(self, "guidance", _number("draw", "guidance", self.guidance, low=0, high=MAX_GUIDANCE))
        if self.seed is not None:
            set_(self, "seed", _number("draw", "seed", self.seed, low=0, high=2**63 - 1, integer=True))
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is None:
                continue
            value = _number("draw", side, value, low=DRAW_SIDE_RANGE[0], high=DRAW_SIDE_RANGE[1], integer=True)
            if value % 8:
                raise ParamsError(f"draw.{side} must be a multiple of 8 (the autoencoder's scale), got {value}")
            set_(self, side, value)
        set_(self, "noise_level", _number("draw", "noise_level", self.noise_level, low=0, high=999, integer=True))

    def updated(self, **changes: Any) -> DrawParams:
        return replace(self, **_known(self, changes))


def _known(obj, changes: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ParamsError(f"unknown {type(obj).__name__} fields {unknown}; known: {', '.join(sorted(names))}")
    return {k: v for k, v in changes.items() if v is not None}


DEFAULT_GENERATION = GenerationParams()
DEFAULT_VISUAL_CACHE = VisualCacheParams()
DEFAULT_DRAW = DrawParams()
