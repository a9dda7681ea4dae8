"""The toy world's image decoder: an ImageBind image embedding back to a toy picture.

The official path draws with Stable unCLIP (`ibllm_agent.image_generation`), whose image-embedding
space is the one ImageBind's vision encoder shares. The toy ImageBind has its own space, so the toy
model ships its own small decoder, trained by `tools/train_toy_decoder.py` on pictures of the toy
world and their toy ImageBind image embeddings. It reads the embedding's direction only (the input is
L2-normalised first): the toy encoders' pre-normalisation norms carry no meaning the decoder could use.

    code = GELU(W1 e/|e|)                              (192)
    x    = W2 code -> (48, 7, 7)
    3 x  [upsample x2 -> conv 3x3 -> GroupNorm -> FiLM(code) -> SiLU]      7 -> 14 -> 28 -> 56
    conv 3x3 -> 12 channels -> PixelShuffle(2) -> sigmoid                  (3, 112, 112), the toy's size

One pass, no diffusion: ~0.7 M parameters, stored in float16 (`image_decoder.safetensors`, ~1.4 MB).
The file records the digest of the vision encoder it was trained against (`vision_digest`), and
loading it beside another encoder (a rebuilt toy model) is refused, with the command that retrains it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ibllm_agent.checkpoint import CheckpointError

FORMAT = "ibllm-toy-image-decoder/1"
"""`format` in the file's metadata: what the file is (a file without it is refused)."""
VISION_PREFIXES = ("modality_preprocessors.vision.", "modality_trunks.vision.", "modality_heads.vision.")


class DecoderMismatchError(CheckpointError):
    """A decoder file that does not belong to the ImageBind it would decode for."""


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the toy decoder (written into the file, read back before building)."""

    embed_dim: int = 1024
    """ImageBind's embedding width."""
    code_dim: int = 192
    """Width of the code every block is modulated by."""
    base: int = 7
    """Side of the first feature map (7 -> 14 -> 28 -> 56 -> 112 after the pixel shuffle)."""
    channels: tuple[int, ...] = (48, 32, 24, 16)
    """Channels of the first map and after each upsampling block."""
    out_size: int = 112
    """Picture side: the toy world's `IMAGE_SIZE` (the loaders scale to 224)."""

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        blocks = len(self.channels) - 1
        if self.base * 2 ** (blocks + 1) != self.out_size:
            raise ValueError(f"base {self.base} doubled {blocks + 1} times is not out_size {self.out_size}")
        if min(self.embed_dim, self.code_dim, self.base, *self.channels) < 1:
            raise ValueError(f"decoder sizes must be positive: {self}")
        if any(c % 4 for c in self.channels[1:]):
            raise ValueError(f"block channels must be multiples of 4 (GroupNorm groups): {self.channels}")


class _Block(nn.Module):
    """Upsample x2, 3x3 conv, GroupNorm, FiLM from the code, SiLU."""

    def __init__(self, c_in: int, c_out: int, code_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(4, c_out, affine=False)
        self.film = nn.Linear(code_dim, 2 * c_out)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(F.interpolate(x, scale_factor=2, mode="nearest")))  # (B, C, 2H, 2W)
        scale, shift = self.film(code)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return F.silu(x * (1 + scale) + shift)


class ToyImageDecoder(nn.Module):
    """ImageBind embedding [B, embed_dim] -> picture [B, 3, out_size, out_size] in [0, 1]."""

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        self.config = c = config or DecoderConfig()
        self.code = nn.Linear(c.embed_dim, c.code_dim)
        self.seed_map = nn.Linear(c.code_dim, c.channels[0] * c.base * c.base)
        self.blocks = nn.ModuleList(_Block(a, b, c.code_dim) for a, b in zip(c.channels[:-1], c.channels[1:]))
        self.to_rgb = nn.Conv2d(c.channels[-1], 12, 3, padding=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        c = self.config
        code = F.gelu(self.code(F.normalize(embedding.float(), dim=-1)))  # (B, code_dim)
        x = self.seed_map(code).view(-1, c.channels[0], c.base, c.base)  # (B, C0, 7, 7)
        for block in self.blocks:
            x = block(x, code)  # (B, C_i, 2H, 2W)
        return torch.sigmoid(F.pixel_shuffle(self.to_rgb(x), 2))  # (B, 3, out_size, out_size)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def vision_digest(imagebind_sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the vision branch's tensors (names, shapes and float32 values, in name order): which
    image space a decoder was trained for. Other branches (a new depth encoder) do not change it."""
    h = hashlib.sha256()
    keys = sorted(k for k in imagebind_sd if k.startswith(VISION_PREFIXES))
    if not keys:
        raise CheckpointError("the ImageBind state dict has no vision branch")
    for k in keys:
        t = imagebind_sd[k].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{list(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_decoder(decoder: ToyImageDecoder, path: str | Path, *, vision: str, extra: Mapping | None = None) -> Path:
    """Write the decoder as float16 safetensors with its config, the vision digest and `extra` (recipe)."""
    from safetensors.torch import save_file

    from ibllm_agent.train.engine import atomic_path

    path = Path(path)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in decoder.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(decoder.config)), "vision_digest": vision,
            "extra": json.dumps(dict(extra or {}))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)  # an asset every user reads (safetensors writes its file owner-only)
    return path


def load_decoder(path: str | Path, *, vision: str | None = None) -> ToyImageDecoder:
    """Read a decoder file (float32 in memory, eval mode). `vision`: the digest of the ImageBind it
    will decode for; a different recorded digest raises `DecoderMismatchError`."""
    from safetensors import SafetensorError, safe_open

    from ibllm_agent.checkpoint import MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: the toy image decoder is missing (python tools/train_toy_decoder.py)",
                               file=path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})", file=path) from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a toy image decoder (format {meta.get('format')!r}, expected "
                              f"{FORMAT!r})", file=path)
    if vision is not None and meta.get("vision_digest") != vision:
        raise DecoderMismatchError(
            f"{path}: this decoder was trained for another toy vision encoder (a rebuilt toy model?); "
            "retrain it with `python tools/train_toy_decoder.py`", file=path)
    try:
        raw = json.loads(meta.get("config", "{}"))
        known = {f.name for f in fields(DecoderConfig)}
        config = DecoderConfig(**{k: v for k, v in raw.items() if k in known})
        decoder = ToyImageDecoder(config)
        decoder.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the decoder's config and tensors do not fit ({e})", file=path) from e
    decoder.requires_grad_(False)
    return decoder.eval()


def decoder_info(path: str | Path) -> dict:
    """The metadata recorded in a decoder file (config, vision digest, recipe) without loading tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return {"format": meta.get("format"), "config": json.loads(meta.get("config", "{}")),
            "vision_digest": meta.get("vision_digest"), "extra": json.loads(meta.get("extra", "{}"))}
