"""The model behind the app: loading it, describing it, and the LangChain objects built on it.

One `ImageBindLLM` serves every browser session (the app wraps `load_model` in `st.cache_resource`);
`ChatImageBindLLM` holds `model.card.lock` for each decoding step, so concurrent users' answers interleave
step by step on the one model; the explorer's encoding holds it too. In server mode (`ModelSpec.server_url`)
the model is a `ServedModel`: an `ibllm serve` answers through the same LangChain classes (remote mode).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import torch

import ibllm_agent
from ibllm_agent import ChatImageBindLLM, ImageBindEmbeddings
from ibllm_agent.cache.base import Neighbor
from ibllm_agent.card import ModelCard
from ibllm_agent.params import GenerationParams, VisualCacheParams

from .settings import ModelSpec

log = logging.getLogger(__name__)

OFFICIAL_WEIGHTS_HINT = (
    "For the official ImageBind-LLM 7B weights, start the app with a config file that names them: "
    "`ibllm ui --config ibllm-ui.toml` (README: *Streamlit app and notebooks*)."
)


@dataclass(frozen=True)
class ServedModel:
    """A model an `ibllm serve` answers with: what the app shows of it (nothing is loaded here)."""

    url: str
    card: ModelCard
    feature_dim: int
    has_visual_cache: bool
    image_generator: str | None = None
    """What draws on the server's /v1/images/generations (None: it cannot draw)."""

    @classmethod
    def connect(cls, url: str) -> ServedModel:
        from ibllm_agent.remote import RemoteClient

        info = RemoteClient(url, max_retries=0).get("/models")["data"][0]
        card = ModelCard(name=info["id"], is_toy=info["ibllm"]["toy"], quantize=info["ibllm"].get("quantize"))
        return cls(url, card, info["ibllm"]["feature_dim"], info["ibllm"]["visual_cache"],
                   info["ibllm"].get("image_generator"))


def load_model(spec: ModelSpec):
    """Load the model a spec names (and its Stable unCLIP folder, when given), or connect to its server; errors
    (missing files, bad checkpoints, a folder that is not Stable unCLIP, a server that does not answer)
    propagate to the caller."""
    log.info("loading %s", spec)
    if spec.server_url:
        return ServedModel.connect(spec.server_url)
    model = ibllm_agent.load(spec.name, **spec.load_kwargs())
    if spec.unclip_dir:
        from ibllm_agent.image_generation import attach_unclip

        attach_unclip(model, spec.unclip_dir)
    return model


def can_draw(model) -> bool:
    """A generator is attached, or the toy's decoder can be (the toy ships one)."""
    if isinstance(model, ServedModel):
        return model.image_generator is not None
    return model.image_generator is not None or model.card.is_toy


@dataclass(frozen=True)
class ServedDrawing:
    """A picture the server drew: what the app shows of a `DrawResult`."""

    png: bytes
    generator: str
    seconds: float
    neighbors: list[Neighbor]

    def png_bytes(self) -> bytes:
        return self.png


def draw(model, attachments, prompt: str, params, visual_cache):
    """A picture of the inputs (with their signed weights) -> `DrawResult` (the model's lock is taken inside),
    or, from a server, its /v1/images/generations answer."""
    visual_cache = visual_cache.updated(enabled=bool(visual_cache.enabled) and has_visual_cache(model))
    if isinstance(model, ServedModel):
        from dataclasses import asdict

        from ibllm_agent.content_blocks import MediaPart
        from ibllm_agent.remote import RemoteClient, content_part

        parts = [content_part(MediaPart(a.data, a.modality, a.name, mime_type=a.mime)) for a in attachments]
        options = {"seed": params.seed, "steps": params.steps, "guidance": params.guidance,
                   "noise_level": params.noise_level, "visual_cache": asdict(visual_cache)}
        body = RemoteClient(model.url, max_retries=0).post("/images/generations", {
            "model": model.card.name, "prompt": prompt,
            "ibllm": {"inputs": parts, "weights": [a.signed_weight for a in attachments], **options}})
        summary = body["ibllm"]
        return ServedDrawing(base64.b64decode(body["data"][0]["b64_json"]), summary["generator"], summary["seconds"],
                             [Neighbor(**n) for n in summary["neighbors"]])
    from ibllm_agent.image_generation import generate_image

    items = [(a.media, a.signed_weight) for a in attachments]
    return generate_image(model, items, prompt, params, visual_cache)


def has_visual_cache(model) -> bool:
    return model.has_visual_cache if isinstance(model, ServedModel) else model.visual_cache is not None


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
    """`toy · toy world · cpu · float32 · visual cache: 1,234 images` (and `int4 weights` when quantised): what
    answers, where, at which precision."""
    toy = " · toy world" if model.card.is_toy else ""
    if isinstance(model, ServedModel):
        cache_text = "visual cache" if model.has_visual_cache else "no visual cache"
        return f":material/cloud: **{model.card.name}**{toy} · served by {model.url} · {cache_text}"
    dtype = str(model.dtype).removeprefix("torch.")
    cache = model.visual_cache
    cache_text = f"visual cache: {len(cache):,} images" if cache is not None else "no visual cache"
    quant = f" · {model.card.quantize} weights" if model.card.quantize else ""
    return f":material/memory: **{model.card.name}**{toy} · {model.device} · {dtype}{quant} · {cache_text}"


def license_notice(model) -> str | None:
    """The official weights' licences, for the model panel (None for the toy, the tiny test model, and a served
    model: its weights are loaded, and their licence accepted, where the server runs)."""
    if model.card.is_toy or model.card.name == "tiny" or isinstance(model, ServedModel):
        return None
    from ibllm_agent.licenses import model_license_notice

    return model_license_notice()


def toy_notice(model) -> str | None:
    """A plain notice that the toy model knows only its synthetic world (None for real weights)."""
    if not model.card.is_toy:
        return None
    concepts = toy_concepts()
    return (f"**Toy world.** This small model was trained on synthetic pictures, sounds, clips and 3D shapes of "
            f"{len(concepts)} things ({', '.join(concepts)}) and knows nothing else. " + OFFICIAL_WEIGHTS_HINT)


def _where(model) -> dict:
    """The LangChain classes' arguments that say which model answers: the shared one, or the server."""
    return {"model": model.card.name, "base_url": model.url} if isinstance(model, ServedModel) else {"model": model}


def chat_model(model, generation: GenerationParams, visual_cache: VisualCacheParams) -> ChatImageBindLLM:
    """The LangChain chat model over the shared ImageBindLLM (or the server) with this session's settings (the
    toggle only asks for the cache; a model without one answers without it)."""
    enabled = bool(visual_cache.enabled) and has_visual_cache(model)
    return ChatImageBindLLM(**_where(model), temperature=generation.temperature, top_p=generation.top_p,
                            max_tokens=generation.max_tokens, visual_cache=visual_cache.updated(enabled=enabled))


def embed_media(model, attachments) -> torch.Tensor:
    """ImageBind embeddings (N, D) of attached files (under the model's lock; the server's are normalised,
    which the explorer's cosines and mixtures do anyway)."""
    if isinstance(model, ServedModel):
        return torch.tensor(ImageBindEmbeddings(**_where(model)).embed_media([a.data for a in attachments]))
    with model.card.lock:
        return model.encode([a.media for a in attachments])


def embed_texts(model, texts: list[str]) -> torch.Tensor:
    """ImageBind text embeddings (N, D)."""
    if isinstance(model, ServedModel):
        return torch.tensor(ImageBindEmbeddings(**_where(model)).embed_documents(texts))
    from ibllm_agent.media import load_text

    with model.card.lock:
        return model.encode([load_text(t, name=t) for t in texts])
