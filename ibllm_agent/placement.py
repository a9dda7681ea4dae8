"""Where a model runs and at which precision: `device="auto"`, `dtype="auto"`, `quantize=`, and the memory check.

    resolve_placement(device="auto", dtype="auto", quantize=None, official=True) -> Placement(device, dtype, ...)

auto device: CUDA, then Apple MPS, then the CPU. auto dtype: float16 on CUDA and MPS; on a CPU, bfloat16
for the official weights when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX on x86, the BF16
extension on Arm: `torch` then runs bfloat16 products 2-5x faster than float32, measured in
tools/bench_7b.py), else float32. The toy model (and "tiny") keep float32 on a CPU: they are small, and
their answers are the reference ones. `Placement.reasons` says why each choice was made (`ibllm doctor`
prints it). Every bad option is a `PlacementError` naming it.

`check_memory` compares what a model will need (from its files' tensors) with the memory available and
refuses before anything is loaded, naming the precisions that would fit.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ibllm_agent.llama.quant import QUANTIZE_CHOICES, bytes_per_weight, check_quantize

__all__ = ["DEVICE_CHOICES", "DTYPES", "DTYPE_CHOICES", "InsufficientMemoryError", "Placement", "PlacementError",
           "QUANTIZE_CHOICES", "available_memory", "check_memory", "cpu_bf16", "resolve_device", "resolve_dtype",
           "resolve_placement"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
"""`device=` values (also "cuda:N"); the CLI's --device, the server's and the app's choices."""
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""`dtype=` values (aliases below); the CLI's --dtype, the server's and the app's choices."""
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class PlacementError(ValueError):
    """A device, dtype or quantize option that this machine or this model cannot honour; the message names it."""


class InsufficientMemoryError(PlacementError, MemoryError):
    """The model would not fit in the memory available at the chosen precision (said before loading)."""


def cpu_bf16() -> tuple[bool, str]:
    """(whether this CPU multiplies bfloat16 natively, the evidence): /proc/cpuinfo flags on Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, f"cannot read /proc/cpuinfo on {platform.system()}: bfloat16 not assumed fast"
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    found = sorted(flags & {"amx_bf16", "avx512_bf16", "bf16"})
    if found:
        return True, f"the CPU has {'/'.join(found)}"
    return False, "the CPU has no AVX512-BF16/AMX/BF16 instructions"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> tuple[torch.device, str]:
    """(device, why). None or "auto": CUDA, then MPS, then CPU. A device this machine lacks is a PlacementError."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), f"auto: CUDA device {torch.cuda.get_device_name(0)}"
        if _mps_available():
            return torch.device("mps"), "auto: no CUDA; Apple MPS is available"
        return torch.device("cpu"), "auto: no CUDA device and no Apple MPS, so the CPU"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PlacementError(f"device={device!r} is not a device; use one of {', '.join(DEVICE_CHOICES)} "
                             "(or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device"
            raise PlacementError(f"device={str(device)!r} but no CUDA device is available (torch {torch.__version__}, "
                                 f"{build}); use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PlacementError(f"device={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev, "as asked"
    if dev.type == "mps" and not _mps_available():
        raise PlacementError(f"device={str(device)!r} but Apple MPS is not available here; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise PlacementError(f"device={str(device)!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}")
    return dev, "as asked"


def resolve_dtype(dtype, device: torch.device | str, *, official: bool = False) -> torch.dtype:
    """The dtype for `dtype` on `device` (see `resolve_placement`; None = "auto"). `official=False` (the
    default, and the toy's) keeps float32 on a CPU, as before "auto" existed."""
    return _resolve_dtype(dtype, torch.device(device), official)[0]


def _resolve_dtype(dtype, device: torch.device, official: bool) -> tuple[torch.dtype, str]:
    if dtype is None or dtype == "auto":
        if device.type in ("cuda", "mps"):
            return torch.float16, f"auto: float16 on {device.type}"
        if not official:
            return torch.float32, "auto: float32 on the CPU for the toy model (its reference answers)"
        fast, why = cpu_bf16()
        if fast:
            return torch.bfloat16, f"auto: bfloat16 on the CPU ({why})"
        return torch.float32, f"auto: float32 on the CPU ({why})"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise PlacementError(f"dtype={dtype!r} is not understood; use one of {', '.join(DTYPE_CHOICES)}")
        dtype = DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PlacementError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPE_CHOICES)}")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PlacementError(f"dtype='bfloat16' is not supported on {torch.cuda.get_device_name(device)} "
                             "(compute capability < 8.0); use dtype='float16'")
    if dtype == torch.bfloat16 and device.type == "mps":
        try:
            torch.ones(1, dtype=dtype, device=device)
        except (RuntimeError, TypeError) as e:
            raise PlacementError("dtype='bfloat16' is not supported by MPS on this macOS; use dtype='float16'") from e
    return dtype, "as asked"


@dataclass(frozen=True)
class Placement:
    """What a load will use, and why."""

    device: torch.device
    dtype: torch.dtype
    """The floating-point dtype: of every float weight, and of the activations."""
    quantize: str | None
    """"int8", "int4" or None: LLaMA's (and the bind network's) linear weights."""
    reasons: tuple[str, ...]

    def describe(self) -> str:
        q = self.quantize or "none"
        return (f"device {self.device}, dtype {str(self.dtype).removeprefix('torch.')}, quantize {q} "
                f"({'; '.join(self.reasons)})")


def resolve_placement(device: str | torch.device | None = "auto", dtype=None, quantize: str | None = None, *,
                      official: bool = True) -> Placement:
    """The device, dtype and quantisation a load will use (see the module docstring), with the reasons.
    `official=False` for the toy and tiny models."""
    quantize = _check_quantize(quantize)
    dev, why_device = resolve_device(device)
    dt, why_dtype = _resolve_dtype(dtype, dev, official)
    reasons = [f"device: {why_device}", f"dtype: {why_dtype}"]
    if quantize is not None:
        if dev.type == "cpu":
            reasons.append(f"quantize: {quantize} weights, products on torch's packed CPU kernels (bfloat16 "
                           "activations inside)")
        elif dev.type == "cuda":
            reasons.append(f"quantize: {quantize} weights" + (", tinygemm kernel" if quantize == "int4" else
                                                                ", dequantised per product (no fast int8 kernel)"))
        else:
            reasons.append(f"quantize: {quantize} weights, dequantised per product on {dev.type} (slow)")
    return Placement(dev, dt, quantize, tuple(reasons))


def _check_quantize(quantize):
    try:
        return check_quantize(quantize)
    except ValueError as e:
        raise PlacementError(str(e)) from e


# ----- memory ------------------------------------------------------------------------------------------

def available_memory(device: torch.device) -> int | None:
    """Bytes available for a new model on `device`: MemAvailable (Linux) for the CPU, free memory for CUDA;
    None where it cannot be told (the check is then skipped)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


RUNTIME_BYTES = 1 << 30
"""Room for everything but the weights: Python and torch (~0.5 GB), a request's KV cache and activations."""


def model_bytes(tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, quantize: str | None,
                quantized: callable) -> int:
    """Bytes the weights will take: tensors `quantized(name)` accepts at the quantised size (`quantize`, or the
    scheme it returns when it returns one; as stored when the file is already quantised: integer tensors),
    float ones in `dtype`."""
    total = 0
    float_bytes = torch.empty((), dtype=dtype).element_size()
    for name, t in tensors:
        scheme = quantized(name) if quantize is not None else None
        if not t.is_floating_point():
            total += t.numel() * t.element_size()
        elif scheme:
            total += int(t.numel() * bytes_per_weight(scheme if isinstance(scheme, str) else quantize, float_bytes))
        else:
            total += t.numel() * float_bytes
    return total


def check_memory(state_dicts: Mapping[str, Mapping[str, torch.Tensor]], placement: Placement, quantized: callable,
                 *, what: str) -> int:
    """Refuse (InsufficientMemoryError) before loading when the weights in `state_dicts` ({file: tensors},
    still mapped, nothing read) plus RUNTIME_BYTES exceed the memory available on the device; the message
    gives the need at every precision and names those that would fit. Returns the estimate (bytes).
    IBLLM_SKIP_MEMORY_CHECK=1 skips it."""
    pairs = [(name, t) for sd in state_dicts.values() for name, t in sd.items()]
    need = model_bytes(pairs, placement.dtype, placement.quantize, quantized) + RUNTIME_BYTES
    have = available_memory(placement.device)
    if have is None or os.environ.get("IBLLM_SKIP_MEMORY_CHECK") == "1" or need <= have:
        return need
    options = {}
    for q in (None, *QUANTIZE_CHOICES):
        for dt in ((placement.dtype,) if q else (torch.float32, torch.bfloat16, torch.float16)):
            if placement.device.type == "cpu" and dt == torch.float16:
                continue
            options[f"{str(dt).removeprefix('torch.')}" + (f" + quantize={q}" if q else "")] = \
                model_bytes(pairs, dt, q, quantized) + RUNTIME_BYTES
    fits = [k for k, v in options.items() if v <= have]
    listing = ", ".join(f"{k} ~{v / 1e9:.1f} GB" for k, v in options.items())
    advice = f"would fit: {', '.join(fits)}" if fits else "no precision fits; free memory or use a larger machine"
    chosen = str(placement.dtype).removeprefix("torch.") + (f" + quantize={placement.quantize}"
                                                           if placement.quantize else "")
    raise InsufficientMemoryError(
        f"{what} needs ~{need / 1e9:.1f} GB on {placement.device} at {chosen}, but only {have / 1e9:.1f} GB is "
        f"available. Estimates from the files' tensors: {listing}. {advice} "
        "(IBLLM_SKIP_MEMORY_CHECK=1 loads anyway)")
