"""The model behind the app: loading it, describing it, and the LangChain objects built on it.

One `ImageBindLLM` serves every browser session (the app wraps `load_model` in `st.cache_resource`);
`ChatImageBindLLM` holds `model.card.lock` for each decoding step, so concurrent users' answers interleave
step by step on the one model; the explorer's encoding holds it too.
"""

from __future__ import annotations

import logging

import torch

import ibllm_agent
from ibllm_agent import ChatImageBindLLM
from ibllm_agent.params import GenerationParams, VisualCacheParams

from .settings import ModelSpec

log = logging.getLogger(__name__)

OFFICIAL_WEIGHTS_HINT = (
    "For the official ImageBind-LLM 7B weights, give their paths under **Model** in the sidebar, or start "
    "the app with a config file: `IBLLM_UI_CONFIG=ibllm-ui.toml ibllm ui` (README: *Streamlit app and notebooks*)."
)


def load_model(spec: ModelSpec):
    """Load the model a spec names (and its Stable unCLIP folder, when given); errors (missing files, bad
    checkpoints, a folder that is not Stable unCLIP) propagate to the caller."""
    log.info("loading %s", spec)
    model = ibllm_agent.load(spec.name, **spec.load_kwargs())
    if spec.unclip_dir:
        from ibllm_agent.image_generation import attach_unclip

        attach_unclip(model, spec.unclip_dir)
    return model


def can_draw(model) -> bool:
    """A generator is attached, or the toy's decoder can be (the toy ships one)."""
    return model.image_generator is not None or model.card.is_toy


def draw(model, attachments, prompt: str, params, visual_cache):
    """A picture of the inputs (with their signed weights) -> `DrawResult` (the model's lock is taken inside)."""
    from ibllm_agent.image_generation import generate_image

    items = [(a.media, a.signed_weight) for a in attachments]
    enabled = bool(visual_cache.enabled) and model.visual_cache is not None
    return generate_image(model, items, prompt, params, visual_cache.updated(enabled=enabled))


def toy_concepts() -> list[str]:
    """The toy world's concepts as short noun phrases ("a dog", "rain", ...), for the notice and the explorer."""
    from ibllm_agent.toy import CONCEPTS

    return [c.noun for c in CONCEPTS]


def toy_example(modality: str, seed: int) -> tuple[str, bytes]:
    """A fresh toy-world file of a random concept (name, bytes), for the "try an example" buttons."""
    import random
    import tempfile
    from pathlib import Path

    from ibllm_agent.toy import CONCEPT_NAMES, ToyWorld

    name = random.Random(seed).choice(CONCEPT_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        sample = ToyWorld(seed).write(name, modality, 0, Path(tmp))
        path = Path(sample.path)
        return f"{name}{path.suffix}", path.read_bytes()


def status_line(model) -> str:
    """`toy · toy world · cpu · float32 · visual cache: 1,234 images`: what answers, where, at which precision."""
    dtype = str(model.dtype).removeprefix("torch.")
    cache = model.visual_cache
    cache_text = f"visual cache: {len(cache):,} images" if cache is not None else "no visual cache"
    toy = " · toy world" if model.card.is_toy else ""
    return f":material/memory: **{model.card.name}**{toy} · {model.device} · {dtype} · {cache_text}"


def toy_notice(model) -> str | None:
    """A plain notice that the toy model knows only its synthetic world (None for real weights)."""
    if not model.card.is_toy:
        return None
    concepts = toy_concepts()
    return (f"**Toy world.** This small model was trained on synthetic pictures, sounds, clips and 3D shapes of "
            f"{len(concepts)} things ({', '.join(concepts)}) and knows nothing else. " + OFFICIAL_WEIGHTS_HINT)


def chat_model(model, generation: GenerationParams, visual_cache: VisualCacheParams) -> ChatImageBindLLM:
    """The LangChain chat model over the shared ImageBindLLM with this session's settings (the toggle only
    asks for the cache; a model without one answers without it)."""
    enabled = bool(visual_cache.enabled) and model.visual_cache is not None
    return ChatImageBindLLM(model=model, temperature=generation.temperature, top_p=generation.top_p,
                            max_tokens=generation.max_tokens, visual_cache=visual_cache.updated(enabled=enabled))


def embed(model, items) -> torch.Tensor:
    """ImageBind embeddings (N, 1024) of MediaInputs, under the model's lock."""
    with model.card.lock:
        return model.encode(items)
