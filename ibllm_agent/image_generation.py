"""Image output: any input -> a picture, as the reference's `imagebind_LLM/image_generate.py` does.

    result = model.generate_image([load_media("rain.wav")], "a photo", seed=0)   # a DrawResult
    result.image.save("rain.png")                                                # or result.save(path)

The reference turns the inputs into one vector and hands it to Stable unCLIP as its image embedding
(`pipe(prompt=prompt, image_embeds=embedding)`; the pipeline is `stabilityai/stable-diffusion-2-1-unclip`,
whose image-embedding space is OpenCLIP ViT-H's, the space ImageBind's vision encoder was trained in).
The vector (`ImageBindLLM.image_embedding`, computed with `mix_prenorm` and `cache_blend_keep_norm`):

1. every input's ImageBind output BEFORE the final normalisation (`prenorm`), clips averaged;
2. point-cloud embeddings divided by `POINT_SCALE` = 5;
3. the weighted sum with weights w_i / (sum_j w_j + 1e-6);
4. with the visual cache: normalise, blend with the softmax-weighted neighbours (the one blend,
   `cache.base.blend`), renormalise, multiply back by the mixture's norm.

Why this is not `fusion.fuse`: `fuse` feeds the bind network, which the LLM was tuned on unit-norm
ImageBind features, so it normalises each input first. Stable unCLIP reads the *length* of its image
embedding too (it was trained on un-normalised OpenCLIP image embeddings, of norm ~20-30 for ViT-H, and
`image_normalizer` standardises per dimension), so the reference keeps the pre-normalisation vectors,
whose norm ImageBind's vision head shares with OpenCLIP's, scales the point branch down to that range,
and restores the norm after the cache. Normalising first, as `fuse` does, would hand unCLIP vectors of
norm 1, an input it never saw. So the mix is computed as the reference computes it, in its own function,
and `fuse` stays the one mix of everything that conditions an answer.

Two generators draw from the vector: `UnclipGenerator` (diffusers' `StableUnCLIPImg2ImgPipeline`,
`pip install 'ibllm-agent[generate]'`, built from a local folder the user gives; nothing is downloaded)
and `ToyDecoderGenerator` (the toy model's own small decoder, `ibllm_agent.image_decoder`). The server draws
through `generate_image` too (`POST /v1/images/generations`, `ibllm_agent.serve`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ibllm_agent.cache.base import Neighbor, VisualCache, retrieve_and_blend
from ibllm_agent.checkpoint import CheckpointError, MissingFileError
from ibllm_agent.fusion import MIN_NORM, checked_weights
from ibllm_agent.params import DEFAULT_DRAW, DrawParams, ParamsError, VisualCacheParams

logger = logging.getLogger(__name__)

__all__ = [
    "POINT_SCALE", "ConditioningError", "DrawResult", "ImageGenerationError", "ImageGenerator",
    "ImagePromptTooLongError", "ToyDecoderGenerator", "UnclipFolderError", "UnclipGenerator", "attach_unclip",
    "cache_blend_keep_norm", "check_unclip_folder", "generate_image", "generation_weights",
    "image_generate", "mix_prenorm",
]

POINT_SCALE = 5.0
"""The reference divides point-cloud embeddings by this before mixing (`point_scale=5.`)."""
UNCLIP_PIPELINE = "StableUnCLIPImg2ImgPipeline"
"""The diffusers pipeline class of `stabilityai/stable-diffusion-2-1-unclip` (image variation)."""
MAX_PROMPT_CHARS = 10_000


class ImageGenerationError(ValueError):
    """A picture that cannot be drawn as asked; the message says why."""


class ConditioningError(ImageGenerationError):
    """Inputs that do not make a usable conditioning vector (no input, bad weights, zero or not finite)."""


class ImagePromptTooLongError(ImageGenerationError):
    """A prompt longer than the text encoder reads (77 tokens for Stable unCLIP's CLIP); unCLIP would cut
    it silently."""


class UnclipFolderError(CheckpointError):
    """A Stable unCLIP folder that is missing files, is another model, or does not fit ImageBind."""


# ----- the conditioning vector ---------------------------------------------------------------------------

def generation_weights(weights: Sequence[float], *, names: Sequence[str] | None = None) -> list[float]:
    """The reference's `[w / (sum(weights) + 1e-6) for w in weights]`, after checking every weight: finite,
    not 0 (it would leave its input out), and a positive sum (a zero sum divides by 1e-6, a negative one
    flips the picture's embedding)."""
    out = checked_weights(weights, names=names, error=ConditioningError, purpose="draw")
    total = sum(out)
    if not total > 1e-3:
        raise ConditioningError(f"the weights sum to {total:g}; drawing needs a positive sum (the reference "
                                "divides by it)")
    return [w / (total + 1e-6) for w in out]


def mix_prenorm(embeddings: Sequence[torch.Tensor], weights: Sequence[float], branches: Sequence[str], *,
                names: Sequence[str] | None = None, point_scale: float = POINT_SCALE) -> torch.Tensor:
    """Pre-normalisation ImageBind embeddings (each [B, D]) of `branches` -> the reference's mixture [B, D]
    (float32): point embeddings / `point_scale`, then sum of e_i * w_i / (sum w + 1e-6), added in order."""
    if len(embeddings) != len(weights) or len(embeddings) != len(branches):
        raise ConditioningError(f"need one embedding, weight and branch per input: {len(embeddings)}, "
                                f"{len(weights)}, {len(branches)}")
    coefficients = generation_weights(weights, names=names)
    mixed = None
    for i, (e, w, branch) in enumerate(zip(embeddings, coefficients, branches)):
        e = torch.as_tensor(e).float()
        if e.ndim == 1:
            e = e[None]
        if not bool(torch.isfinite(e).all()):
            raise ConditioningError(f"{names[i] if names else f'input {i}'!r}: its ImageBind embedding contains "
                                    "NaN or inf")
        if branch == "point":
            e = e / point_scale
        mixed = e * w if mixed is None else mixed + e * w
    if not bool(torch.isfinite(mixed).all()) or bool((mixed.norm(dim=-1) < MIN_NORM).any()):
        raise ConditioningError("the weighted inputs mix to a zero or non-finite vector; there is nothing to draw")
    return mixed


def cache_blend_keep_norm(cache: VisualCache, mixed: torch.Tensor, params: VisualCacheParams | None = None
                          ) -> tuple[torch.Tensor, list[list[Neighbor]]]:
    """The reference's cache step for drawing: unit = mixed / |mixed| searches the cache (here the query IS
    normalised, unlike `forward_visual`'s), the neighbours are blended in (`cache.base.blend`), and the
    result is scaled back to |mixed|. Returns ([B, D], neighbours per row)."""
    params = params or VisualCacheParams()
    norm = mixed.norm(dim=-1, keepdim=True)  # (B, 1)
    blended, neighbors = retrieve_and_blend(cache, mixed / norm, params.size, params.t, params.weight)
    return (norm * blended.float()).float(), neighbors


# ----- drawing -------------------------------------------------------------------------------------------

@dataclass
class DrawResult:
    """One drawn picture and what it was drawn from."""

    image: Any
    """A PIL image."""
    embedding: torch.Tensor
    """The conditioning vector [D] it was drawn from."""
    prompt: str
    params: DrawParams
    generator: str
    """Which generator drew it ("stable-unclip", "toy-decoder")."""
    seconds: float
    neighbors: list[Neighbor] = field(default_factory=list)
    """Visual-cache items blended into the vector."""
    notes: list[str] = field(default_factory=list)
    """What the generator did not use (the toy ignores the prompt, steps and guidance)."""

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    def base64(self) -> str:
        return base64.b64encode(self.png_bytes()).decode("ascii")

    def content_block(self) -> dict:
        """A LangChain v1 image block carrying the PNG."""
        return {"type": "image", "base64": self.base64(), "mime_type": "image/png",
                "extras": {"prompt": self.prompt, "generator": self.generator}}

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically (a temporary name renamed into place: no half-written file)."""
        from ibllm_agent.train.engine import atomic_path

        path = Path(path)
        data = self.png_bytes()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    def summary(self) -> dict:
        """JSON-ready description (no pixels)."""
        return {"prompt": self.prompt, "generator": self.generator, "seconds": round(self.seconds, 3),
                "size": list(self.image.size), "embedding_norm": round(float(self.embedding.norm()), 4),
                "params": {k: getattr(self.params, k) for k in ("steps", "guidance", "seed", "height", "width",
                                                                  "noise_level")},
                "neighbors": [{"id": n.id, "score": n.score, "weight": n.weight, "metadata": dict(n.metadata)}
                              for n in self.neighbors],
                "notes": list(self.notes)}


class ImageGenerator(ABC):
    """Draws a picture from a conditioning vector and a prompt."""

    name: str = "generator"
    feature_dim: int

    def check_prompt(self, prompt: str) -> None:
        """Refuse a prompt the generator cannot read whole (before anything is computed)."""
        if not isinstance(prompt, str):
            raise ImageGenerationError(f"the prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ImagePromptTooLongError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")

    def check_params(self, params: DrawParams) -> None:  # noqa: B027 - optional hook: most settings fit any
        """Refuse settings this generator cannot honour."""

    @abstractmethod
    def draw(self, embedding: torch.Tensor, prompt: str, params: DrawParams) -> tuple[Any, list[str]]:
        """embedding [1, D] -> (PIL image, notes on settings it did not use)."""


class ToyDecoderGenerator(ImageGenerator):
    """The toy model's decoder (`ibllm_agent.image_decoder`): one pass, 112 x 112, in the toy's own
    embedding space. It reads the vector's direction only and ignores the prompt, steps and guidance;
    `noise_level` adds seeded noise to the direction (variation), and a height/width resizes."""

    name = "toy-decoder"

    def __init__(self, decoder):
        self.decoder = decoder
        self.feature_dim = decoder.config.embed_dim

    @classmethod
    def for_model(cls, model) -> ToyDecoderGenerator:
        """The decoder named in the toy's toy.json, checked against the model's vision encoder."""
        from ibllm_agent.factory import read_imagebind
        from ibllm_agent.image_decoder import load_decoder, vision_digest
        from ibllm_agent.pretrained import toy_files

        if not model.card.is_toy:
            raise ImageGenerationError("the toy decoder draws only for the toy model; for the official weights "
                                       "attach Stable unCLIP (attach_unclip(model, folder) or --unclip-dir)")
        imagebind_file = Path(model.card.files["imagebind"])
        files = toy_files(imagebind_file.parent)  # the toy.json beside the encoders the model was loaded from
        name = files.meta.get("image_decoder")
        if not name:
            raise MissingFileError(f"{files.root / 'toy.json'} names no image decoder; train one with "
                                   "`python tools/train_toy_decoder.py`", file=files.root / "toy.json")
        # the digest of the file the encoders came from, as training records it: the model's own tensors
        # may be rounded (float16 / bfloat16 on a GPU) and would never match
        sd, _ = read_imagebind(imagebind_file)
        return cls(load_decoder(files.root / name, vision=vision_digest(sd)))

    def draw(self, embedding, prompt, params):
        from PIL import Image

        e = embedding.float().reshape(1, -1)
        notes = ["the toy decoder draws from the embedding alone: prompt, steps and guidance are not used"]
        if params.noise_level:
            g = torch.Generator().manual_seed(params.seed if params.seed is not None else torch.seed())
            direction = F.normalize(torch.randn(e.shape, generator=g), dim=-1)
            e = F.normalize(e, dim=-1) + 2 * params.noise_level / 1000 * direction
        with torch.no_grad():
            picture = self.decoder(e)[0]  # (3, 112, 112) in [0, 1]
        array = (picture.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        image = Image.fromarray(array, "RGB")
        if params.height or params.width:
            size = (params.width or image.width, params.height or image.height)
            image = image.resize(size, Image.BICUBIC)
        return image, notes


# ----- Stable unCLIP ---------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_COMPONENT_FILES = {
    "unet": ("config.json",), "vae": ("config.json",), "text_encoder": ("config.json",),
    "image_encoder": ("config.json",), "image_normalizer": ("config.json",),
    "scheduler": ("scheduler_config.json",), "image_noising_scheduler": ("scheduler_config.json",),
    "feature_extractor": ("preprocessor_config.json",),
}
_MODELS = ("unet", "vae", "text_encoder", "image_encoder", "image_normalizer")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnclipFolderError(f"{path}: unreadable JSON ({e})", file=path) from e
    if not isinstance(data, dict):
        raise UnclipFolderError(f"{path}: not a JSON object", file=path)
    return data


def check_unclip_folder(folder: str | Path, feature_dim: int | None = 1024) -> dict:
    """Check a local Stable unCLIP folder (the layout `save_pretrained` writes) before loading anything:
    it is `StableUnCLIPImg2ImgPipeline`, every component has its config and weights, and its UNet reads
    image embeddings of `feature_dim` (ImageBind's width). Returns model_index.json; raises one
    `UnclipFolderError` listing every problem found."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such folder (give the local Stable unCLIP folder, e.g. a download "
                               "of stabilityai/stable-diffusion-2-1-unclip)", file=folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise UnclipFolderError(f"{folder}: no model_index.json; this is not a diffusers pipeline folder", file=folder)
    index = _read_json(index_path)
    cls = index.get("_class_name")
    if cls != UNCLIP_PIPELINE:
        raise UnclipFolderError(f"{folder}: a {cls!r} pipeline, not {UNCLIP_PIPELINE} (Stable unCLIP image "
                                "variation, stabilityai/stable-diffusion-2-1-unclip), the one that takes image "
                                "embeddings", file=folder)
    problems = []
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_normalizer",
                 "image_noising_scheduler", "image_encoder", "feature_extractor"):
        spec = index.get(name)
        if not (isinstance(spec, list) and len(spec) == 2 and spec[1]):
            problems.append(f"model_index.json has no {name}")
            continue
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"{name}/ is missing")
            continue
        for required in _COMPONENT_FILES.get(name, ()):
            if not (sub / required).is_file():
                problems.append(f"{name}/{required} is missing")
        if name in _MODELS and not any(p.suffix in _WEIGHT_SUFFIXES for p in sub.iterdir() if p.is_file()):
            problems.append(f"{name}/ has no weights (*.safetensors or *.bin)")
        if name == "tokenizer" and not ((sub / "tokenizer.json").is_file()
                                        or ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file())):
            problems.append("tokenizer/ has neither vocab.json + merges.txt nor tokenizer.json")
    if not problems and feature_dim is not None:
        unet = _read_json(folder / "unet" / "config.json")
        width = unet.get("projection_class_embeddings_input_dim")
        if unet.get("class_embed_type") != "projection" or width != 2 * feature_dim:
            problems.append(f"the UNet reads image embeddings of width {None if width is None else width // 2} "
                            f"(class_embed_type {unet.get('class_embed_type')!r}), ImageBind's are {feature_dim}")
        normalizer = _read_json(folder / "image_normalizer" / "config.json")
        if normalizer.get("embedding_dim") != feature_dim:
            problems.append(f"image_normalizer is for {normalizer.get('embedding_dim')}-d embeddings, not "
                            f"{feature_dim}")
    if problems:
        raise UnclipFolderError(f"{folder}: not a usable Stable unCLIP folder: " + "; ".join(problems), file=folder)
    return index


class UnclipGenerator(ImageGenerator):
    """diffusers' Stable unCLIP image-variation pipeline, fed the reference's vector as `image_embeds`."""

    name = "stable-unclip"

    def __init__(self, pipe, feature_dim: int | None = None):
        self.pipe = pipe
        self.feature_dim = feature_dim or pipe.image_normalizer.config.embedding_dim

    @classmethod
    def from_folder(cls, folder: str | Path, *, device="cpu", dtype=None, feature_dim: int = 1024) -> UnclipGenerator:
        """Load `folder` (checked first, `check_unclip_folder`) on `device`; float16 on CUDA, float32 on the
        CPU by default. Only local files are read. Nothing is kept unless the whole pipeline loaded."""
        from ibllm_agent.factory import resolve_dtype

        check_unclip_folder(folder, feature_dim)
        try:
            from diffusers import StableUnCLIPImg2ImgPipeline
        except ImportError as e:
            raise ImageGenerationError("drawing with Stable unCLIP needs diffusers and transformers: "
                                       "pip install 'ibllm-agent[generate]'") from e
        device = torch.device(device)
        dtype = resolve_dtype(dtype, device)
        try:
            pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
            pipe = pipe.to(device)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError) as e:
            raise UnclipFolderError(f"{folder}: the Stable unCLIP pipeline did not load: {e}", file=folder) from e
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, feature_dim)

    def check_prompt(self, prompt: str) -> None:
        super().check_prompt(prompt)
        tokenizer = self.pipe.tokenizer
        n = len(tokenizer(prompt, truncation=False).input_ids)
        if n > tokenizer.model_max_length:
            raise ImagePromptTooLongError(f"the prompt is {n} tokens; the text encoder reads at most "
                                          f"{tokenizer.model_max_length} (Stable unCLIP would cut the rest)")

    def check_params(self, params: DrawParams) -> None:
        timesteps = self.pipe.image_noising_scheduler.config.num_train_timesteps
        if params.noise_level >= timesteps:
            raise ParamsError(f"draw.noise_level must be below {timesteps}, got {params.noise_level}")
        factor = self.pipe.vae_scale_factor
        for side in ("height", "width"):
            value = getattr(params, side)
            if value is not None and value % factor:
                raise ParamsError(f"draw.{side} must be a multiple of {factor}, got {value}")

    def draw(self, embedding, prompt, params):
        pipe = self.pipe
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        out = pipe(prompt=prompt, image_embeds=embedding.reshape(1, -1).to(device, dtype),
                   num_inference_steps=params.steps, guidance_scale=params.guidance, noise_level=params.noise_level,
                   height=params.height, width=params.width, generator=generator)
        return out.images[0], []


def attach_unclip(model, folder: str | Path, *, device=None, dtype=None) -> UnclipGenerator:
    """Load Stable unCLIP from `folder` (on the model's device by default) and make it the model's
    generator. The model keeps its previous generator if loading fails."""
    generator = UnclipGenerator.from_folder(folder, device=device or model.device, dtype=dtype,
                                            feature_dim=model.feature_dim)
    model.image_generator = generator
    return generator


def generator_for(model) -> ImageGenerator:
    """The model's generator; for the toy model its decoder, loaded (and attached) on first use."""
    if model.image_generator is None:
        if not model.card.is_toy:
            raise ImageGenerationError("no image generator is attached: give the local Stable unCLIP folder "
                                       "(attach_unclip(model, folder), `ibllm draw --unclip-dir`, or the app's "
                                       "Model settings); it is never downloaded at run time")
        model.image_generator = ToyDecoderGenerator.for_model(model)
    return model.image_generator


def _as_conditioning(model, inputs) -> torch.Tensor | None:
    """A given vector (a pre-computed conditioning [D] or [1, D]), or None when `inputs` are inputs."""
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        vector = inputs.detach().float().cpu().reshape(-1, inputs.shape[-1])
        if vector.shape != (1, model.feature_dim):
            raise ConditioningError(f"a conditioning vector must be [{model.feature_dim}] or [1, "
                                    f"{model.feature_dim}], got {list(inputs.shape)}")
        if not bool(torch.isfinite(vector).all()) or float(vector.norm()) < MIN_NORM:
            raise ConditioningError("the conditioning vector is zero or not finite; there is nothing to draw")
        return vector
    return None


def generate_image(model, inputs, prompt: str = "", params: DrawParams | None = None,
                   visual_cache: VisualCacheParams | bool | None = None, *, generator: ImageGenerator | None = None,
                   **overrides) -> DrawResult:
    """Draw one picture of `inputs` (see `ImageBindLLM.image_embedding`; or a ready conditioning vector [D])
    with `prompt`. `params` (`DrawParams`) and keyword overrides (`steps=`, `seed=`, `guidance=`, ...);
    `visual_cache` as everywhere (None: when the model has one). Everything is checked (settings, prompt
    length, the vector) before the generator runs; a failure leaves nothing behind."""
    params = (params or DEFAULT_DRAW).updated(**overrides) if overrides else (params or DEFAULT_DRAW)
    generator = generator or generator_for(model)
    generator.check_prompt(prompt)
    generator.check_params(params)
    t0 = time.perf_counter()
    vector = _as_conditioning(model, inputs)
    neighbors: list[Neighbor] = []
    if vector is None:
        with model.card.lock:
            vector, found = model.image_embedding(inputs, visual_cache, return_neighbors=True)
        if vector.shape[0] != 1:
            raise ConditioningError(f"one picture at a time: the inputs are a batch of {vector.shape[0]}")
        neighbors = found[0]
    if vector.shape[-1] != generator.feature_dim:
        raise ConditioningError(f"the generator reads {generator.feature_dim}-d embeddings, the model gives "
                                f"{vector.shape[-1]}")
    image, notes = generator.draw(vector, prompt, params)
    return DrawResult(image=image, embedding=vector[0], prompt=prompt, params=params, generator=generator.name,
                      seconds=time.perf_counter() - t0, neighbors=neighbors, notes=notes)


def image_generate(inputs, model, pipe, prompt, cache_size, cache_t, cache_weight, knn=True, point_scale=5.0):
    """The reference's function, same arguments (`image_generate.py`): returns the PIL image `pipe` draws.
    `pipe` is a diffusers Stable unCLIP pipeline (or an `ImageGenerator`)."""
    if point_scale != POINT_SCALE:
        raise ImageGenerationError(f"point_scale other than {POINT_SCALE} is not supported")
    generator = pipe if isinstance(pipe, ImageGenerator) else UnclipGenerator(pipe)
    cache = VisualCacheParams(enabled=bool(knn), size=cache_size, t=cache_t, weight=cache_weight)
    return generate_image(model, inputs, prompt, visual_cache=cache, generator=generator).image
