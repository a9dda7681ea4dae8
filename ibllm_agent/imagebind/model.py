"""ImageBind (all modalities) with Point-Bind's 3D encoder, key-for-key compatible with the official files.

``ImageBindModel(args).load_state_dict(torch.load("imagebind_w3D.pth"), strict=True)`` works one to one
(``imagebind_huge.pth`` has no ``point_trunk``: build with ``ImageBindArgs.from_state_dict(sd)``, which
infers every size from the tensors and leaves out the modalities a file does not carry).

``forward({modality: tensor}) -> {modality: [B, out_embed_dim]}`` with the upstream semantics:

* an input with ``ndim >= 5`` is a list of clips: [B, S, ...] -> [B*S, ...], each clip goes through
  preprocessor, trunk, head and post-processor, and the results are AVERAGED over S;
* a 4-D image goes through the vision branch (repeated to 2 frames); a video is [B, S, 3, 2, H, W];
* post-processing: L2-normalise, then x ``min(exp(log_logit_scale), 100)`` (text, from the file),
  x 20 audio, x 5 depth, x 10 thermal, x 5 imu, x 1 point; vision is only normalised.

Shapes (huge): vision [B, 3, 224, 224] or [B, S, 3, 2, 224, 224]; text [B, 77] int64 (CLIP BPE ids, see
``bpe.tokenize``); audio [B, S, 1, 128, 204] (fbank clips); depth [B, 1, 224, 224]; thermal
[B, 1, 224, 224]; imu [B, 6, 2000]; point [B, N, 3] with N >= 512.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ibllm_agent.checkpoint import (
    CheckpointError,
    ConfigValueError,
    check_int,
    check_number,
    read_json_object,
)

from .heads import TextHead, cls_head, point_head, postprocessor
from .point_bert import PointBindTrunk
from .preprocessors import IMUPreprocessor, TextPreprocessor, spectrogram_preprocessor, vision_preprocessor
from .transformer import Trunk

ModalityType = SimpleNamespace(
    VISION="vision", TEXT="text", AUDIO="audio", THERMAL="thermal", DEPTH="depth", IMU="imu", POINT="point"
)
MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu", "point")
# Modalities with a transformer trunk under `modality_trunks` (point has its own `point_trunk`).
TRUNK_MODALITIES = MODALITIES[:-1]
# Attention head width of imagebind_huge, used to infer head counts from a checkpoint's widths.
HUGE_HEAD_DIMS = {"vision": 80, "text": 64, "audio": 64, "depth": 48, "thermal": 64, "imu": 64, "point": 64}


@dataclass(frozen=True)
class ImageBindArgs:
    """ImageBind + Point-Bind sizes. Defaults are ``imagebind_huge`` with Point-Bind (``imagebind_w3D``);
    names follow the upstream ``ImageBindModel`` constructor, so its kwargs (e.g. an
    ``imagebind_config.json``) apply as they are."""

    modalities: tuple[str, ...] = MODALITIES
    """Modalities to build; a checkpoint without ``point_trunk`` (imagebind_huge.pth) has no "point"."""
    out_embed_dim: int = 1024
    """Width of the shared embedding space."""

    video_frames: int = 2
    """Frames per vision clip; images are repeated to this many frames."""
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    """Vision Conv3d patch (time, height, width), stride equal to the kernel."""
    vision_image_size: int = 224
    """Square image side; follows from the position embedding (1 + 16*16 tokens at 224)."""
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16

    text_vocab_size: int = 49408
    """CLIP BPE vocabulary: 512 byte tokens (with and without ``</w>``), 48894 merges, SOT and EOT."""
    text_context_length: int = 77
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16

    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_kernel_size: int = 16
    audio_stride: int = 10
    """Patches overlap: 16x16 kernels every 10 bins/frames (not inferable from weights)."""
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1
    """Stochastic depth in training only (as every drop_path below)."""

    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_kernel_size: int = 16
    depth_image_size: int = 224
    depth_drop_path: float = 0.0

    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_kernel_size: int = 16
    thermal_image_size: int = 224
    thermal_drop_path: float = 0.0

    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_kernel_size: int = 8
    """Samples per IMU window (a window of all channels is one token)."""
    imu_channels: int = 6
    imu_length: int = 2000
    imu_drop_path: float = 0.7

    point_embed_dim: int = 384
    """Point-BERT width (``trans_dim``)."""
    point_num_blocks: int = 12
    point_num_heads: int = 6
    point_num_group: int = 512
    """Centres picked by farthest point sampling (not inferable from weights)."""
    point_group_size: int = 32
    """Nearest points per centre (not inferable from weights)."""
    point_encoder_dims: int = 256
    point_encoder_widths: tuple[int, int, int] = (128, 256, 512)
    """Mini-PointNet inner widths: first conv hidden, first conv out, second conv hidden."""
    point_pos_hidden: int = 128
    point_proj_dim: int = 512
    """Columns of ``pc_projection`` = input width of the point head."""
    point_drop_path: float = 0.1
    fps_start: str = "first"
    """First FPS centre: "first" (index 0, deterministic) or "random" (upstream's torch.randint)."""

    def __post_init__(self) -> None:
        """Every field checked (type, sign, bounds), lists made tuples, then what fields imply together:
        a bad size fails here naming the field, not as a ZeroDivisionError or a huge build later."""
        for f in fields(self):
            object.__setattr__(self, f.name, _check_field(f.name, getattr(self, f.name)))
        for m in self.modalities:
            dim, heads = getattr(self, f"{m}_embed_dim"), getattr(self, f"{m}_num_heads")
            if dim % heads:
                raise ConfigValueError(f"{m}_num_heads", f"{m}_embed_dim {dim} is not divisible by {heads} heads")
        # (field, patch, input size) per modality: a patch larger than its input leaves no token
        patches = {
            "vision": ("kernel_size", self.kernel_size,
                       (self.video_frames, self.vision_image_size, self.vision_image_size)),
            "audio": ("audio_kernel_size", (self.audio_kernel_size,) * 2,
                      (self.audio_num_mel_bins, self.audio_target_len)),
            "depth": ("depth_kernel_size", (self.depth_kernel_size,) * 2, (self.depth_image_size,) * 2),
            "thermal": ("thermal_kernel_size", (self.thermal_kernel_size,) * 2, (self.thermal_image_size,) * 2),
            "imu": ("imu_kernel_size", (self.imu_kernel_size,), (self.imu_length,)),
        }
        for m, (field, patch, size) in patches.items():
            if m in self.modalities and any(p > n for p, n in zip(patch, size)):
                raise ConfigValueError(field, f"{m} patches {list(patch)} do not fit its input {list(size)}")

    # Token counts (including the CLS token) that the position embeddings must have.
    @property
    def vision_num_tokens(self) -> int:
        kt, kh, kw = self.kernel_size
        return 1 + (self.video_frames // kt) * (self.vision_image_size // kh) * (self.vision_image_size // kw)

    @property
    def audio_num_tokens(self) -> int:
        k, s = self.audio_kernel_size, self.audio_stride
        return 1 + ((self.audio_num_mel_bins - k) // s + 1) * ((self.audio_target_len - k) // s + 1)

    @property
    def depth_num_tokens(self) -> int:
        return 1 + (self.depth_image_size // self.depth_kernel_size) ** 2

    @property
    def thermal_num_tokens(self) -> int:
        return 1 + (self.thermal_image_size // self.thermal_kernel_size) ** 2

    @property
    def imu_num_tokens(self) -> int:
        return 1 + self.imu_length // self.imu_kernel_size

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], overrides: Mapping[str, Any] | None = None) -> ImageBindArgs:
        """Sizes inferred from the tensor shapes and keys of an ImageBind state dict.

        Head counts are ``embed_dim // head_dim`` with huge's head widths (``HUGE_HEAD_DIMS``), unless
        ``overrides`` names them. ``overrides`` holds field values that shapes cannot tell (head counts,
        audio stride, group sizes ...), flat or as ``{"kwargs": {...}}`` (``imagebind_config.json``); a
        value that contradicts a tensor shape is an error.
        """
        overrides = _normalise_overrides(overrides)
        inferred = _infer_sizes(sd, video_frames=overrides.get("video_frames", cls.video_frames),
                                imu_kernel_size=overrides.get("imu_kernel_size", cls.imu_kernel_size))
        for key, value in inferred.items():
            if key in overrides and overrides[key] != value:
                raise ValueError(f"{key}={overrides[key]!r} given, but the state dict says {value!r}")
        for m in inferred["modalities"]:
            key = f"{m}_num_heads"
            if key not in overrides:
                dim, head_dim = inferred[f"{m}_embed_dim"], HUGE_HEAD_DIMS[m]
                if dim % head_dim:
                    raise ValueError(f"{m} width {dim} is not a multiple of huge's head width {head_dim}: "
                                     f"give {key} in the overrides (e.g. imagebind_config.json)")
                inferred[key] = dim // head_dim
        args = cls(**{**overrides, **inferred})
        _check_token_counts(sd, args)
        return args


def imagebind_huge_args(point: bool = True) -> ImageBindArgs:
    """The official ``imagebind_huge`` sizes, with Point-Bind's encoder (``imagebind_w3D.pth``) by default."""
    return ImageBindArgs() if point else ImageBindArgs(modalities=TRUNK_MODALITIES)


def imagebind_tiny_args(point: bool = True) -> ImageBindArgs:
    """Small widths (huge's head widths, 2 heads, 1 block) with the official input shapes, for tests and toys.

    Sizes are what ``from_state_dict`` infers back, so a tiny checkpoint needs no config file.
    """
    widths = {"vision": 160, "text": 128, "audio": 128, "depth": 96, "thermal": 128, "imu": 128}
    sizes: dict[str, Any] = {}
    for m, dim in widths.items():
        sizes.update({f"{m}_embed_dim": dim, f"{m}_num_blocks": 1, f"{m}_num_heads": 2})
    if not point:
        return ImageBindArgs(modalities=TRUNK_MODALITIES, **sizes)
    return ImageBindArgs(
        point_embed_dim=128, point_num_blocks=1, point_num_heads=2, point_encoder_dims=64,
        point_encoder_widths=(32, 64, 128), point_pos_hidden=32, point_proj_dim=64, **sizes,
    )


def read_imagebind_config(path: str | Path) -> dict[str, Any]:
    """Overrides from an ``imagebind_config.json`` (``{"kwargs": {...}}`` or flat) for ``from_state_dict``.

    A file that is not a small JSON object of known fields with sane values raises a CheckpointError
    naming it and the field."""
    path = Path(path)
    try:
        return _normalise_overrides(read_json_object(path))
    except ConfigValueError as e:
        raise CheckpointError(f"{path}: {e}", file=path, field=e.field) from e


_FIELDS = {f.name for f in fields(ImageBindArgs)}
_INT_LIMITS = {"text_vocab_size": 1 << 20, "video_frames": 64, "point_num_group": 8192, "point_group_size": 1024}
"""Largest values of int fields other than widths, sizes and lengths (16384) and block and head counts (256):
far above imagebind_huge's, low enough that nothing built or sampled from them is huge."""


def _check_field(name: str, value: Any) -> Any:
    """`value` (lists as tuples) if it suits the ImageBindArgs field `name`, else ConfigValueError naming it."""
    if name == "modalities":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise ConfigValueError(name, f"must be a non-empty list of modality names, got {value!r}")
        unknown = [m for m in value if m not in MODALITIES]
        if unknown:
            raise ConfigValueError(name, f"unknown ImageBind modalities {unknown}; known: {', '.join(MODALITIES)}")
        if len(set(value)) < len(value):
            raise ConfigValueError(name, f"names a modality twice: {list(value)}")
        return tuple(value)
    if name == "fps_start":
        if value not in ("first", "random"):
            raise ConfigValueError(name, f"must be 'first' or 'random', not {value!r}")
        return value
    if name in ("kernel_size", "point_encoder_widths"):
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ConfigValueError(name, f"must be 3 integers, got {value!r}")
        return tuple(check_int(name, v, 1, 16384) for v in value)
    if name.endswith("_drop_path"):
        return check_number(name, value, 0.0, 0.99)  # 1 would drop every block (and divide by zero)
    limit = 256 if name.endswith(("_num_blocks", "_num_heads")) else _INT_LIMITS.get(name, 16384)
    return check_int(name, value, 1, limit)


def _normalise_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if "kwargs" in overrides:  # upstream's constructor kwargs, beside notes such as "constructor"
        overrides = overrides["kwargs"]
        if not isinstance(overrides, Mapping):
            raise ConfigValueError("kwargs", f"must be an object, got {type(overrides).__name__}")
    unknown = sorted(map(str, set(overrides) - _FIELDS))
    if unknown:
        raise ConfigValueError(unknown[0], f"unknown ImageBind config keys {unknown}")
    return {k: _check_field(k, v) for k, v in overrides.items()}


def _count_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def _infer_sizes(sd: Mapping[str, Tensor], *, video_frames: int, imu_kernel_size: int) -> dict[str, Any]:
    """Every field that follows from tensor shapes (given the two sizes that shapes cannot tell)."""
    pre, trunks, heads = "modality_preprocessors.", "modality_trunks.", "modality_heads."
    present = [m for m in TRUNK_MODALITIES if any(k.startswith(f"{pre}{m}.") for k in sd)]
    if any(k.startswith("point_trunk.") for k in sd):
        present.append("point")
    if not present:
        raise ValueError("not an ImageBind state dict: no 'modality_preprocessors.*' or 'point_trunk.*' keys")
    out: dict[str, Any] = {"modalities": tuple(present)}

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"ImageBind state dict lacks {key!r}")
        if sd[key].ndim != ndim or 0 in sd[key].shape:  # sizes below are divided by and square-rooted
            raise ValueError(f"{key} has shape {list(sd[key].shape)}, not {ndim} non-zero dimensions")
        return tuple(sd[key].shape)

    for m in present:
        if m != "point":
            out[f"{m}_num_blocks"] = _count_blocks(sd, f"{trunks}{m}.blocks.")
    if "vision" in present:
        dim, _, kt, kh, kw = shape(f"{pre}vision.rgbt_stem.proj.1.weight", 5)
        patches = shape(f"{pre}vision.pos_embedding_helper.pos_embed", 3)[1] - 1
        side = math.isqrt(patches // max(1, video_frames // kt))
        out.update(vision_embed_dim=dim, kernel_size=(kt, kh, kw), vision_image_size=side * kh)
    if "text" in present:
        vocab, dim = shape(f"{pre}text.token_embedding.weight", 2)
        out.update(text_vocab_size=vocab, text_embed_dim=dim, text_context_length=shape(f"{pre}text.pos_embed", 3)[1])
    if "audio" in present:
        dim, _, k, _ = shape(f"{pre}audio.rgbt_stem.proj.weight", 4)
        out.update(audio_embed_dim=dim, audio_kernel_size=k)
    for m, stem in (("depth", "depth_stem"), ("thermal", "rgbt_stem")):
        if m in present:
            dim, _, k, _ = shape(f"{pre}{m}.{stem}.proj.weight", 4)
            side = math.isqrt(shape(f"{pre}{m}.pos_embedding_helper.pos_embed", 3)[1] - 1)
            out.update({f"{m}_embed_dim": dim, f"{m}_kernel_size": k, f"{m}_image_size": side * k})
    if "imu" in present:
        dim, window = shape(f"{pre}imu.imu_stem.proj.weight", 2)
        windows = shape(f"{pre}imu.pos_embed", 3)[1] - 1
        out.update(imu_embed_dim=dim, imu_channels=window // imu_kernel_size, imu_length=windows * imu_kernel_size)
    if "point" in present:
        enc = "point_trunk.point_encoder."
        out.update(
            point_embed_dim=shape(f"{enc}cls_token", 3)[-1],
            point_num_blocks=_count_blocks(sd, f"{enc}blocks.blocks."),
            point_encoder_dims=shape(f"{enc}reduce_dim.weight", 2)[1],
            point_encoder_widths=(shape(f"{enc}encoder.first_conv.0.weight", 3)[0],
                                  shape(f"{enc}encoder.first_conv.3.weight", 3)[0],
                                  shape(f"{enc}encoder.second_conv.0.weight", 3)[0]),
            point_pos_hidden=shape(f"{enc}pos_embed.0.weight", 2)[0],
            point_proj_dim=shape("point_trunk.pc_projection", 2)[1],
        )
    head_keys = [k for k in sd if k.startswith(heads) and k.endswith(".weight") and sd[k].ndim == 2]
    if head_keys:
        out["out_embed_dim"] = sd[head_keys[0]].shape[0]
    return out


def _check_token_counts(sd: Mapping[str, Tensor], args: ImageBindArgs) -> None:
    """Position embeddings must match the token counts the sizes imply (e.g. audio stride and lengths)."""
    keys = {
        "vision": "modality_preprocessors.vision.pos_embedding_helper.pos_embed",
        "audio": "modality_preprocessors.audio.pos_embedding_helper.pos_embed",
        "depth": "modality_preprocessors.depth.pos_embedding_helper.pos_embed",
        "thermal": "modality_preprocessors.thermal.pos_embedding_helper.pos_embed",
        "imu": "modality_preprocessors.imu.pos_embed",
    }
    for m, key in keys.items():
        if m in args.modalities and key in sd:
            expected = getattr(args, f"{m}_num_tokens")
            if sd[key].shape[1] != expected:
                raise ValueError(
                    f"{key} has {sd[key].shape[1]} tokens but the {m} sizes give {expected}; "
                    f"pass the {m} sizes as overrides (e.g. from imagebind_config.json)"
                )


_CONVERSION_LOCK = threading.Lock()
"""Held while an encoder's weights are converted on first use (rare: once per modality and model)."""


class ImageBindModel(nn.Module):
    """ImageBind encoders for every modality in ``args.modalities``, with upstream state-dict keys."""

    def __init__(self, args: ImageBindArgs | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.args = a = args or ImageBindArgs()
        kw = {"device": device, "dtype": dtype}
        pre, trunks, heads, post = {}, {}, {}, {}
        for m in a.modalities:
            if m == "point":
                continue
            dim, blocks, n_heads = (getattr(a, f"{m}_{x}") for x in ("embed_dim", "num_blocks", "num_heads"))
            trunks[m] = Trunk(dim, blocks, n_heads, pre_norm=m == "vision", bias_kv=m not in ("vision", "text"),
                              drop_path=getattr(a, f"{m}_drop_path", 0.0), **kw)
            heads[m] = cls_head(dim, a.out_embed_dim, dropout=m == "imu", **kw)
        if "vision" in a.modalities:
            pre["vision"] = vision_preprocessor(a.vision_embed_dim, a.kernel_size, a.video_frames,
                                                a.vision_num_tokens, **kw)
        if "text" in a.modalities:
            pre["text"] = TextPreprocessor(a.text_vocab_size, a.text_context_length, a.text_embed_dim, **kw)
            heads["text"] = TextHead(a.text_embed_dim, a.out_embed_dim, **kw)
        if "audio" in a.modalities:
            pre["audio"] = spectrogram_preprocessor("rgbt_stem", a.audio_embed_dim, a.audio_kernel_size,
                                                    a.audio_stride, a.audio_num_tokens, **kw)
        for m, stem in (("depth", "depth_stem"), ("thermal", "rgbt_stem")):
            if m in a.modalities:
                k = getattr(a, f"{m}_kernel_size")
                pre[m] = spectrogram_preprocessor(stem, getattr(a, f"{m}_embed_dim"), k, k,
                                                  getattr(a, f"{m}_num_tokens"), **kw)
        if "imu" in a.modalities:
            pre["imu"] = IMUPreprocessor(a.imu_embed_dim, a.imu_channels, a.imu_kernel_size, a.imu_num_tokens, **kw)
        if "point" in a.modalities:
            heads["point"] = point_head(a.point_proj_dim, a.out_embed_dim, **kw)
        for m in a.modalities:
            post[m] = postprocessor(m, **kw)
        self.modality_preprocessors = nn.ModuleDict(pre)
        self.modality_trunks = nn.ModuleDict(trunks)
        self.modality_heads = nn.ModuleDict(heads)
        self.modality_postprocessors = nn.ModuleDict(post)
        if "point" in a.modalities:
            self.point_trunk = PointBindTrunk(
                a.point_embed_dim, a.point_num_blocks, a.point_num_heads, a.point_num_group, a.point_group_size,
                a.point_encoder_dims, a.point_encoder_widths, a.point_pos_hidden, a.point_proj_dim,
                a.point_drop_path, a.fps_start, **kw,
            )

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, Tensor], *, overrides: Mapping[str, Any] | None = None, device=None, dtype=None
    ) -> ImageBindModel:
        """Build with sizes inferred from ``sd`` and load it strictly, without a random init or a second copy
        of the weights (the module is created on the meta device and takes the tensors of ``sd``)."""
        model = cls(ImageBindArgs.from_state_dict(sd, overrides), device="meta")
        model.load_state_dict(sd, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.args.modalities

    def branch(self, modality: str) -> list[nn.Module]:
        """The modules of one modality's encoder: preprocessor, trunk, head, post-processor (point: its trunk)."""
        self._check_modality(modality)
        modules = [getattr(self, c)[modality] for c in ("modality_preprocessors", "modality_trunks",
                                                        "modality_heads", "modality_postprocessors")
                   if modality in getattr(self, c)]
        return modules + [self.point_trunk] if modality == "point" else modules

    def convert_on_first_use(self, dtype: torch.dtype, release: Callable[[Tensor], None] | None = None,
                             now: tuple[str, ...] = ()) -> None:
        """Convert each modality's floating-point weights to `dtype` when it is first encoded, not now (`now`:
        these at once). A model loaded from float32 files in a mapping keeps an unused encoder's weights in
        the file, unread: on ImageBind-huge text, audio, depth, thermal, IMU and 3D are 1.1 GB in bfloat16.
        `release(tensor)` gets each source once converted (factory.py drops its file pages)."""
        self._pending = {m: (dtype, release) for m in self.modalities
                         if any(t.is_floating_point() and t.dtype != dtype
                                for module in self.branch(m) for t in [*module.parameters(), *module.buffers()])}
        for m in now:
            self.materialize(m)

    def _apply(self, fn, recurse=True):
        # `.to()`, `.half()`, `.cuda()` act on the weights as loaded would be: convert what is pending first
        for m in list(getattr(self, "_pending", None) or ()):
            self.materialize(m)
        return super()._apply(fn, recurse)

    def materialize(self, modality: str) -> None:
        """Finish a `convert_on_first_use` for `modality` (nothing when none is pending)."""
        pending = getattr(self, "_pending", None)
        if not pending or modality not in pending:
            return
        with _CONVERSION_LOCK, torch.inference_mode(False), torch.no_grad():
            if modality not in pending:  # another thread converted it meanwhile
                return
            dtype, release = pending[modality]
            for module in self.branch(modality):
                for sub in module.modules():
                    for table in (sub._parameters, sub._buffers):
                        for name, t in table.items():
                            if t is None or not t.is_floating_point() or t.dtype == dtype:
                                continue
                            new = t.to(dtype)
                            table[name] = nn.Parameter(new, requires_grad=t.requires_grad) \
                                if isinstance(t, nn.Parameter) else new
                            if release is not None:
                                release(t)
            del pending[modality]

    def forward(
        self, inputs: Mapping[str, Tensor | None], prenorm: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``{modality: input}`` -> ``{modality: [B, out_embed_dim]}``, post-processed as upstream.

        ``prenorm=True`` (upstream) also returns the head outputs before post-processing, averaged over clips.
        """
        outputs, outputs_prenorm = {}, {}
        for modality, value in inputs.items():
            self._check_modality(modality)
            if value is None:
                continue
            clips = value.ndim >= 5  # audio and video inputs are lists of clips
            if clips:
                B, S = value.shape[:2]
                value = value.reshape(B * S, *value.shape[2:])  # (B*S, ...)
            embedding = self.encode(modality, value)
            final = self.modality_postprocessors[modality](embedding)
            if clips:
                embedding = embedding.reshape(B, S, -1).mean(dim=1)
                final = final.reshape(B, S, -1).mean(dim=1)  # (B, out): averaged, not renormalised
            outputs[modality] = final
            outputs_prenorm[modality] = embedding
        return (outputs, outputs_prenorm) if prenorm else outputs

    def encode(self, modality: str, value: Tensor) -> Tensor:
        """One modality's head output [B, out_embed_dim], before post-processing; ``value`` is not split into clips."""
        self._check_modality(modality)
        self.materialize(modality)
        head = self.modality_heads[modality]
        if modality == "point":
            return head(self.point_trunk(value))
        preprocessor = self.modality_preprocessors[modality]
        if modality == "text":
            if value.dtype.is_floating_point or value.ndim != 2:
                raise ValueError(f"text input must be int64 token ids [B, context], got {value.dtype} "
                                 f"{list(value.shape)}")
            tokens = self.modality_trunks["text"](preprocessor(value), preprocessor.mask)
            return head(tokens, value.argmax(dim=-1))
        if modality == "vision" and (value.ndim not in (4, 5) or value.shape[1] != 3):
            raise ValueError(f"vision input must be images [B, 3, H, W] or clips [B, S, 3, T, H, W], "
                             f"got {list(value.shape)} (after splitting clips)")
        value = value.to(head[-1].weight.dtype)
        return head(self.modality_trunks[modality](preprocessor(value)))

    def _check_modality(self, modality: str) -> None:
        if modality in self.args.modalities:
            return
        available = ", ".join(self.args.modalities)
        if modality in MODALITIES:
            why = " (its checkpoint has no point_trunk)" if modality == "point" else ""
            raise ValueError(f"modality {modality!r} is not in this ImageBind model{why}; available: {available}")
        raise ValueError(f"unknown modality {modality!r}; ImageBind modalities are {', '.join(MODALITIES)} "
                         f"(this model has: {available})")


__all__ = [
    "HUGE_HEAD_DIMS", "MODALITIES", "ImageBindArgs", "ImageBindModel", "ModalityType", "imagebind_huge_args",
    "imagebind_tiny_args",
    "read_imagebind_config",
]
