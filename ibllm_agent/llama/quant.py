"""Weight-only quantisation of LLaMA's frozen linear layers: int8 per output channel, int4 in groups.

    w ≈ qweight[n, k] * scales[n]                                   int8: symmetric, one scale per row
    w ≈ (q[n, k] - 8) * scale[g, n] + zero[g, n],  g = k // group   int4: min-max, one (scale, zero) per group

Only the weights are quantised; activations, the bias, LoRA, the gates and the norms stay in floating
point (they are small and trained). The products run on PyTorch's own weight-only kernels, chosen by
measurement on torch 2.13 (tools/bench_quant.py; README "The 7B on the hardware people have"):
`torch._weight_int8pack_mm` and `torch._weight_int4pack_mm_for_cpu` on the CPU (bfloat16
activations: their float32 paths are 10-60x slower), `torch._weight_int4pack_mm` (tinygemm,
bfloat16) on CUDA. Anything else (int8 on CUDA, Apple MPS, an int4 layer whose shape the packed
kernels refuse) multiplies by the dequantised weight: correct everywhere, fast nowhere.

Portable format (state dicts and `ibllm quantize` files; the same on every device):

    int8: qweight int8 [N, K]; scales bfloat16 [N]
    int4: qweight uint8 [N, K/2], two columns per byte, column 2j in the high nibble (gpt-fast's and
          tinygemm's order); scales_and_zeros bfloat16 [K/group, N, 2] (torch's int4 kernels' own layout)

Scales and zeros are rounded to bfloat16 *before* the weights are rounded to them, so the values the
kernels use are exactly those the codes were chosen for (bfloat16 values are exact in float16 and
float32 too). In memory an int4 layer holds `qweight` in its device kernel's packed layout
(`layout` "cpu" or "cuda"; "plain" is the portable one); `state_dict()` always gives the portable
format and `load_state_dict()` takes it, so files never depend on the machine that wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GROUP_SIZES", "INT4_GROUP_SIZE", "QUANTIZED_LLAMA_WEIGHT", "QUANTIZED_SUFFIXES", "QUANTIZE_CHOICES", "QuantLinear", "QuantSpec",
           "QuantizeError", "bytes_per_weight", "check_quantize", "dequantize_int4", "dequantize_int8", "group_size_for",
           "pack_int4", "quantize_int4", "quantize_int8", "quantize_linears", "quantize_state_dict",
           "quantize_structure", "quantized_file_spec", "unpack_int4"]

QUANTIZE_CHOICES = ("int8", "int4")
"""`quantize=` values; None (or "none") keeps the weights in floating point."""
INT4_GROUP_SIZE = 128
"""Columns sharing one (scale, zero) in int4: 128, as GPTQ/AWQ/gpt-fast (0.25 bits per weight of scales)."""
GROUP_SIZES = (256, 128, 64, 32, 16)
"""int4 group sizes: a layer whose width `INT4_GROUP_SIZE` does not divide uses the largest of these that does
(the toy's 352-wide feed-forward: 32; the tiny test model's 176: 16, which only the dequantising path takes)."""
KERNEL_GROUP_SIZES = (256, 128, 64, 32)
"""Group sizes torch's packed int4 kernels accept."""
KERNEL_DTYPE = torch.bfloat16
"""Activation dtype of the packed kernels (and of the scales)."""


class QuantizeError(ValueError):
    """A quantisation option or a quantised tensor that does not fit; the message names the option or key."""


def check_quantize(quantize: str | None) -> str | None:
    """None/"none" -> None; "int8"/"int4" as given; anything else a QuantizeError naming the option."""
    if quantize is None or quantize == "none":
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise QuantizeError(f"quantize={quantize!r} is not supported; use one of {', '.join(QUANTIZE_CHOICES)} "
                            "or None (floating point)")
    return quantize


def bytes_per_weight(quantize: str | None, float_bytes: int = 2) -> float:
    """Memory of one quantised weight, scales included (int4: 4 bits + 2 x 16 bits per group of 128)."""
    if quantize == "int8":
        return 1.0
    if quantize == "int4":
        return 0.5 + 4 / INT4_GROUP_SIZE
    return float(float_bytes)


def group_size_for(in_features: int, requested: int = INT4_GROUP_SIZE) -> int:
    """The int4 group of a layer `in_features` wide: `requested` if it divides the width, else the largest of
    GROUP_SIZES below it that does; QuantizeError if none does."""
    if requested not in GROUP_SIZES:
        raise QuantizeError(f"int4 group size {requested} is not supported; use one of {GROUP_SIZES}")
    for g in GROUP_SIZES:
        if g <= requested and in_features % g == 0:
            return g
    raise QuantizeError(f"a layer {in_features} wide cannot be split into int4 groups of {GROUP_SIZES[-1]} or more")


# ----- the arithmetic (float32; the same for every device) -----------------------------------------------

def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (qweight int8 [N, K], scales bfloat16 [N]): symmetric, per output channel, codes in
    -127..127 (the scale maps the row's largest |w| to 127)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (qweight.to(torch.float32) * scales.to(torch.float32)[:, None]).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [N, K] -> uint8 [N, K/2], column 2j in the high nibble."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> codes int32 [N, K] (the inverse of `pack_int4`)."""
    return torch.stack((packed >> 4, packed & 15), dim=-1).reshape(packed.shape[0], -1).to(torch.int32)


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (qweight uint8 [N, K/2], scales_and_zeros bfloat16 [K/g, N, 2]) with g =
    `group_size_for(K, group_size)`: per group, scale = (max - min) / 15 and zero = min + 8 * scale (the value
    of code 8), so codes 0..15 span the group's range."""
    N, K = weight.shape
    g = group_size_for(K, group_size)
    w = weight.detach().float().reshape(N, K // g, g)  # (N, groups, g)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=1e-6).to(torch.bfloat16)
    zeros = (lo + 8 * scales.float()).to(torch.bfloat16)
    q = torch.round((w - zeros.float()[..., None]) / scales.float()[..., None] + 8).clamp_(0, 15)
    sz = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous()  # (groups, N, 2)
    return pack_int4(q.reshape(N, K)), sz


def dequantize_int4(qweight: torch.Tensor, scales_and_zeros: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Portable int4 -> [N, K] float: (q - 8) * scale + zero per group."""
    q = unpack_int4(qweight).float()  # (N, K)
    N, K = q.shape
    G = scales_and_zeros.shape[0]
    sz = scales_and_zeros.float().transpose(0, 1)  # (N, G, 2)
    w = (q.reshape(N, G, K // G) - 8) * sz[..., 0:1] + sz[..., 1:2]
    return w.reshape(N, K).to(dtype)


# ----- device layouts of int4 --------------------------------------------------------------------------

def _int4_layout(device: torch.device, N: int, K: int, group: int) -> str:
    """The packed layout torch's int4 kernel on `device` accepts for this shape, else "plain"."""
    if group not in KERNEL_GROUP_SIZES:
        return "plain"
    if device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and N % 16 == 0:
        return "cpu"
    if device.type == "cuda" and hasattr(torch.ops.aten, "_weight_int4pack_mm") and N % 8 == 0 and K % 128 == 0:
        return "cuda"
    return "plain"


def _to_layout(plain: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(plain), 1)
    if layout == "cuda":
        return torch.ops.aten._convert_weight_to_int4pack(plain.contiguous(), 8)  # inner k tiles: 8, as torchao
    return plain


def _int4_mm(x: torch.Tensor, qweight: torch.Tensor, layout: str, group: int, sz: torch.Tensor) -> torch.Tensor:
    if layout == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, qweight, group, sz)
    return torch.ops.aten._weight_int4pack_mm(x, qweight, group, sz)


def _from_layout(packed: torch.Tensor, layout: str, N: int, K: int, group: int) -> torch.Tensor:
    """A packed layout back to the portable one, through the kernel itself: with every scale 1 and zero 8 the
    product with the identity returns the codes (small integers, exact in bfloat16)."""
    if layout == "plain":
        return packed
    device = packed.device
    unit = torch.zeros(K // group, N, 2, dtype=KERNEL_DTYPE, device=device)
    unit[..., 0], unit[..., 1] = 1, 8
    codes = torch.empty(N, K, dtype=torch.int32, device=device)
    step = 1024
    for k in range(0, K, step):  # (step, K) rows of the identity at a time: bounded memory
        eye = torch.zeros(min(step, K - k), K, dtype=KERNEL_DTYPE, device=device)
        eye[torch.arange(eye.shape[0], device=device), torch.arange(k, k + eye.shape[0], device=device)] = 1
        codes[:, k:k + eye.shape[0]] = _int4_mm(eye, packed, layout, group, unit).t().round().to(torch.int32)
    return pack_int4(codes)


class QuantLinear(nn.Module):
    """A frozen linear layer with int8 or int4 weights and a floating-point bias; `nn.Linear`'s forward.

    Build one from a float layer with `QuantLinear.from_linear`, or empty (on the meta device, for loading
    a quantised file) with the constructor. Not trainable.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, quantize: str, *,
                 group_size: int = INT4_GROUP_SIZE, device=None, dtype=None):
        super().__init__()
        quantize = check_quantize(quantize)
        if quantize is None:
            raise QuantizeError("QuantLinear needs quantize='int8' or 'int4'")
        self.in_features, self.out_features, self.quantize = in_features, out_features, quantize
        self.layout = "plain"
        """How `qweight` is held: "plain" (the portable format), "cpu" or "cuda" (that device's int4 kernel)."""
        if quantize == "int8":
            self.group_size = in_features
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(out_features, dtype=KERNEL_DTYPE, device=device))
        else:
            if in_features % 2:
                raise QuantizeError(f"int4 needs an even input width, got {in_features}")
            self.group_size = group_size_for(in_features, group_size)
            groups = in_features // self.group_size
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales_and_zeros", torch.empty(groups, out_features, 2, dtype=KERNEL_DTYPE,
                                                                 device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) \
            if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantize: str, *, group_size: int = INT4_GROUP_SIZE,
                    weight: torch.Tensor | None = None) -> QuantLinear:
        """Quantise `linear` (or `weight`, e.g. with LoRA merged into it); the bias is kept as it is. The
        result is in the portable layout: call `repack()` for the device's kernel."""
        w = linear.weight if weight is None else weight
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, quantize, group_size=group_size,
                  device="meta")
        out.set_weight(w)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return out

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantise a float [out, in] weight into this layer (on the weight's device, in this layer's format)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise QuantizeError(f"weight of shape {list(weight.shape)} for a layer "
                                f"{self.out_features} x {self.in_features}")
        if self.quantize == "int8":
            self.qweight, self.scales = quantize_int8(weight)
        else:
            self.qweight, self.scales_and_zeros = quantize_int4(weight, self.group_size)
            self.layout = "plain"

    @classmethod
    def cat(cls, parts: list[QuantLinear]) -> QuantLinear:
        """One layer whose output is the parts' outputs concatenated: their rows stacked (quantisation is per
        row, so this equals quantising the stacked weight). Parts in a packed layout are unpacked first (slow:
        fuse before `repack`)."""
        first = parts[0]
        if any(p.quantize != first.quantize or p.in_features != first.in_features or p.group_size != first.group_size
               for p in parts):
            raise QuantizeError("only layers quantised alike (scheme, input width, group size) can be fused")
        out = cls(first.in_features, sum(p.out_features for p in parts), any(p.bias is not None for p in parts),
                  first.quantize, group_size=first.group_size, device="meta")
        if first.quantize == "int8":
            out.qweight = torch.cat([p.qweight for p in parts])
            out.scales = torch.cat([p.scales for p in parts])
        else:
            out.qweight = torch.cat([_from_layout(p.qweight, p.layout, p.out_features, p.in_features, p.group_size)
                                     for p in parts])
            out.scales_and_zeros = torch.cat([p.scales_and_zeros for p in parts], dim=1)
        if out.bias is not None:
            ref = next(p.bias for p in parts if p.bias is not None)
            out.bias = nn.Parameter(torch.cat([p.bias if p.bias is not None else ref.new_zeros(p.out_features)
                                               for p in parts]), requires_grad=False)
        return out

    def repack(self) -> None:
        """Make the weights ready for their device's kernel: int4 `qweight` (portable) into the kernel's packed
        layout, if it has one; int8 tensors 64-byte aligned (a tensor read from a file mapping may not be:
        safetensors aligns to 8 bytes, and `torch._weight_int8pack_mm` crashes on a weight that is not
        16-byte aligned once it has 4 rows or more, torch 2.13)."""
        if self.qweight.is_meta:
            return
        if self.quantize == "int8":
            if self.qweight.data_ptr() % 64:
                self.qweight = self.qweight.clone()
            if self.scales.data_ptr() % 64:
                self.scales = self.scales.clone()
            return
        if self.layout != "plain":
            return
        layout = _int4_layout(self.qweight.device, self.out_features, self.in_features, self.group_size)
        if layout != "plain":
            self.qweight = _to_layout(self.qweight, layout)
            self.layout = layout

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the layer multiplies by, [out, in] in `dtype`."""
        if self.quantize == "int8":
            return dequantize_int8(self.qweight, self.scales, dtype)
        plain = _from_layout(self.qweight, self.layout, self.out_features, self.in_features, self.group_size)
        return dequantize_int4(plain, self.scales_and_zeros, dtype)

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    # state dicts carry the portable format whatever the layout in memory
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.quantize == "int4" and self.layout != "plain":
            destination[prefix + "qweight"] = _from_layout(self.qweight, self.layout, self.out_features,
                                                           self.in_features, self.group_size)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.quantize == "int4":
            self.layout = "plain"
            key = prefix + "scales_and_zeros"
            if key in state_dict and tuple(state_dict[key].shape[:2]) != tuple(self.scales_and_zeros.shape[:2]):
                error_msgs.append(f"{key}: {list(state_dict[key].shape)} is not [{self.in_features} / "
                                  f"{self.group_size} groups, {self.out_features}, 2]: quantised with another "
                                  "group size or for another layer")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        device = x2.device
        if self.quantize == "int8" and device.type == "cpu":
            out = torch._weight_int8pack_mm(x2.to(KERNEL_DTYPE).contiguous(), self.qweight, self.scales)
        elif self.quantize == "int4" and self.layout != "plain":
            if self.qweight.device.type != self.layout:
                raise RuntimeError(f"int4 weights packed for {self.layout} cannot run on {self.qweight.device}: "
                                   "load the model again with that device instead of moving it")
            out = _int4_mm(x2.to(KERNEL_DTYPE).contiguous(), self.qweight, self.layout, self.group_size,
                           self.scales_and_zeros)
        else:
            dtype = x2.dtype if x2.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
            out = F.linear(x2.to(dtype), self.dequantized(dtype))
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.quantize == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quantize={self.quantize}{group}, layout={self.layout}")


def quantize_linears(root: nn.Module, names: Iterable[str], quantize: str, *,
                     group_size: int = INT4_GROUP_SIZE, release=None) -> None:
    """Replace the float linear layers `names` (dotted paths under `root`) by QuantLinears, one at a time, so
    that memory never holds more than one layer twice. `release(tensor)` is called with each float weight
    once it is quantised (e.g. to drop its pages of a mapped file)."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        linear = getattr(parent, attr)
        if isinstance(linear, QuantLinear):
            continue
        q = QuantLinear.from_linear(linear, quantize, group_size=group_size)
        q.repack()
        if release is not None:
            release(linear.weight)
        setattr(parent, attr, q)


# ----- quantised files ------------------------------------------------------------------------------------

QUANTIZED_SUFFIXES = (".qweight", ".scales", ".scales_and_zeros")
"""The keys a quantised layer has instead of `.weight` (the adapter file lacks them, as it lacks the weights)."""
QUANTIZED_LLAMA_WEIGHT = re.compile(r"^(layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])|output)\.weight$")
"""LLaMA weights (Meta's keys) that `quantize=` quantises: the frozen projections and the output layer."""


@dataclass(frozen=True)
class QuantSpec:
    """How a quantised LLaMA file was quantised (read from its tensors, so any writer's file is checked)."""

    quantize: str
    group_size: int
    """int4: the requested group (each layer uses `group_size_for(width, group_size)`); int8: 0."""
    layers: tuple[str, ...]
    """Module paths of the quantised layers ("layers.0.attention.wq", ..., "output")."""


def quantized_file_spec(sd: Mapping[str, torch.Tensor], file) -> QuantSpec | None:
    """None for a float file; else the scheme of its `*.qweight` tensors, every layer checked: one scheme for
    all, the companion scales present, and shapes that agree (int4: [K/group, N, 2] scales and zeros for a
    [N, K/2] qweight with a group every layer derives from the same group size). CheckpointError naming the
    file and key otherwise."""
    from ibllm_agent.checkpoint import CheckpointError

    layers = sorted(k.removesuffix(".qweight") for k in sd if k.endswith(".qweight"))
    if not layers:
        return None
    schemes, groups = {}, {}
    for layer in layers:
        q = sd[layer + ".qweight"]
        if q.ndim != 2:
            raise CheckpointError(f"{file}: {layer}.qweight has shape {list(q.shape)}, not a matrix", file=file,
                                  field=layer + ".qweight")
        if q.dtype == torch.int8:
            schemes[layer] = "int8"
            s = sd.get(layer + ".scales")
            if s is None or tuple(s.shape) != (q.shape[0],) or not s.is_floating_point():
                raise CheckpointError(f"{file}: int8 layer {layer} needs {layer}.scales of shape [{q.shape[0]}] (one "
                                      f"per output row), found {None if s is None else list(s.shape)}", file=file,
                                      field=layer + ".scales")
        elif q.dtype == torch.uint8:
            schemes[layer] = "int4"
            sz = sd.get(layer + ".scales_and_zeros")
            N, K = q.shape[0], 2 * q.shape[1]
            if sz is None or sz.ndim != 3 or tuple(sz.shape[1:]) != (N, 2) or K % sz.shape[0] \
                    or (K // sz.shape[0]) not in GROUP_SIZES:
                raise CheckpointError(
                    f"{file}: int4 layer {layer} ({N} x {K}) needs {layer}.scales_and_zeros of shape "
                    f"[{K} / group, {N}, 2] with a group of {'/'.join(map(str, GROUP_SIZES))} columns, found "
                    f"{None if sz is None else list(sz.shape)}: the groups or scales do not match the weights",
                    file=file, field=layer + ".scales_and_zeros")
            groups[layer] = K // sz.shape[0]
        else:
            raise CheckpointError(f"{file}: {layer}.qweight is {q.dtype}, neither int8 nor packed int4 (uint8)",
                                  file=file, field=layer + ".qweight")
    if len(set(schemes.values())) > 1:
        raise CheckpointError(f"{file}: mixes int8 and int4 layers ({', '.join(sorted(set(schemes.values())))}); "
                              "quantise the whole file one way", file=file)
    scheme = next(iter(schemes.values()))
    group = max(groups.values()) if groups else 0
    for layer, g in groups.items():
        K = 2 * sd[layer + ".qweight"].shape[1]
        if g != group_size_for(K, group):
            raise CheckpointError(f"{file}: {layer}.scales_and_zeros groups {g} columns, but the file's group size "
                                  f"{group} gives a layer {K} wide groups of {group_size_for(K, group)}: the groups do "
                                  "not match", file=file, field=layer + ".scales_and_zeros")
    return QuantSpec(scheme, group, tuple(layers))


def quantize_structure(root: nn.Module, spec: QuantSpec) -> None:
    """Replace the float linear layers of `spec.layers` by empty (meta) QuantLinears, so that a quantised
    file loads into `root` strictly, key by key."""
    for name in spec.layers:
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        linear = getattr(parent, attr)
        if not isinstance(linear, nn.Linear):
            raise QuantizeError(f"{name} is not a linear layer of the model")
        setattr(parent, attr, QuantLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                          spec.quantize, group_size=spec.group_size or INT4_GROUP_SIZE,
                                          device="meta", dtype=linear.weight.dtype))


def quantize_state_dict(sd: Mapping[str, torch.Tensor], quantize: str, *, group_size: int = INT4_GROUP_SIZE,
                        release=None) -> Iterator[tuple[str, torch.Tensor]]:
    """The portable quantised tensors of a LLaMA state dict (Meta's keys): `QUANTIZED_LLAMA_WEIGHT` weights
    become `qweight` + `scales` (int8) or `qweight` + `scales_and_zeros` (int4), one at a time (`release`
    gets each float source once done); the other tensors pass through unchanged."""
    for key, t in sd.items():
        if QUANTIZED_LLAMA_WEIGHT.match(key):
            base = key.removesuffix(".weight")
            if quantize == "int8":
                q, s = quantize_int8(t)
                yield base + ".qweight", q
                yield base + ".scales", s
            else:
                q, sz = quantize_int4(t, group_size)
                yield base + ".qweight", q
                yield base + ".scales_and_zeros", sz
            if release is not None:
                release(t)
        else:
            yield key, t
