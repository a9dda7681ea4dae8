"""Safe, strict, low-memory checkpoint loading.

* `.pth`/`.pt` files are read with `torch.load(weights_only=True, mmap=True)` (torch >= 2.6: earlier
  versions let a crafted file bypass weights_only, CVE-2025-32434): a file that pickles code (or any
  object that is not a tensor container) is refused and never executed, and the error says which of
  "not a checkpoint", "corrupt" or "pickles <global>" it is; tensors stay in the file mapping until a
  dtype/device change needs a copy, so loading does not hold two copies.
* `.safetensors` files are read with `safetensors`.
* The small JSON files that size a model (`params.json`, `imagebind_config.json`) are read with
  `read_json_object` (size cap, strict JSON) and every value is checked with `check_int`/`check_number`
  before anything is built; the `CheckpointError` names the file and the field.
* `load_into` is strict: keys a file may legitimately lack are named explicitly (a set or a
  predicate), never a blanket `strict=False`; the error lists missing and unexpected keys (sorted)
  and shape mismatches, and names the file. It checks everything before assigning anything.

Key names: our modules use the official names (Meta's LLaMA keys, `prefix_query`, `llama.*`, ImageBind's
`modality_*`/`point_trunk.*`) except the bind network, whose reference names (`image_bind_f2_3`) say
nothing; `UPSTREAM_KEY_MAP` is the one table between the two, applied by `ImageBindLLM.state_dict()` and
`load_state_dict()` through the hooks below, so files and state dicts always carry the official names.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import mmap
import pickle
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

UPSTREAM_KEY_MAP: dict[str, str] = {
    "image_bind_proj.weight": "bind.proj.weight",
    "image_bind_proj.bias": "bind.proj.bias",
    **{f"image_bind_norm_{i}.weight": f"bind.blocks.{i - 1}.norm.weight" for i in (1, 2, 3)},
    **{f"image_bind_f{j}_{i}.weight": f"bind.blocks.{i - 1}.w{j}.weight" for i in (1, 2, 3) for j in (1, 2, 3)},
}
"""Official adapter key -> our parameter name (`ImageBindLLM.bind`, a `BindNetwork`)."""
_TO_UPSTREAM = {ours: official for official, ours in UPSTREAM_KEY_MAP.items()}


def to_upstream_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post hook: our bind-network names -> the official ones, in place and in order."""
    renamed = {(prefix + _TO_UPSTREAM[k[len(prefix):]] if k[len(prefix):] in _TO_UPSTREAM else k): v
               for k, v in state_dict.items()}
    state_dict.clear()
    state_dict.update(renamed)


def from_upstream_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre hook: the official bind-network names -> ours, in place."""
    for official, ours in UPSTREAM_KEY_MAP.items():
        if prefix + official in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + official)

LLAMA_FILE_IGNORED = frozenset({"rope.freqs"})
"""Keys of Meta's consolidated.*.pth that the model does not use (RoPE is recomputed)."""

ADAPTER_ONLY_LLAMA_KEY = re.compile(
    r"^layers\.\d+\.(attention\.gate|attention\.w[qo]\.bias|feed_forward\.w[123]\.bias"
    r"|attention\.lora_w[qkvo]_l[12]\.weight|feed_forward\.lora_w[123]_l[12]\.weight)$"
)
"""LLaMA parameters that only the ImageBind-LLM adapter file carries (Meta's file lacks them)."""

FROZEN_LLAMA_KEY = re.compile(
    r"^llama\.(tok_embeddings\.weight|output\.weight"
    r"|layers\.\d+\.attention\.w[qkvo]\.weight|layers\.\d+\.feed_forward\.w[123]\.weight)$"
)
"""Frozen LLaMA weights that the adapter file (7B.pth) leaves out: they come from Meta's file."""

MAX_LISTED = 25
"""Keys shown per list in an error message (the exception carries the full lists)."""


class MappedStateDict(dict):
    """A state dict whose tensors live in a read-only file mapping (torch.load(mmap=True)).

    `load_into` may drop the pages of a tensor it has copied (converted to another dtype or device),
    so a conversion never holds the file's copy and the converted copy of the whole model at once.
    """


def release_pages(tensor: torch.Tensor) -> None:
    """madvise(MADV_DONTNEED) the whole pages inside `tensor`'s bytes: for a private, unwritten file
    mapping the kernel just drops them (they would be re-read from the file if touched again)."""
    if sys.platform != "linux" or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    page = mmap.PAGESIZE
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # 4 = MADV_DONTNEED


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


class CheckpointError(ValueError):
    """A checkpoint (or a file that goes with it) that cannot be used; the message names the file
    (and `field`, when one value of a config file is at fault)."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None,
                 missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[tuple[str, tuple, tuple]] | None = None):
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.field = field
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


class MissingFileError(CheckpointError, FileNotFoundError):
    """A required file (checkpoint, params.json, tokenizer.model, index) does not exist."""


class ConfigValueError(ValueError):
    """A size or setting outside what the model supports; `field` names it. Readers of config files
    turn it into a `CheckpointError` naming the file."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_int(field: str, value, low: int, high: int) -> int:
    """`value` if it is an int (not a bool, not a float such as 1e6) in low..high, else ConfigValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigValueError(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigValueError(field, f"must be in {low}..{high}, got {value}")
    return value


def check_number(field: str, value, low: float, high: float) -> float:
    """`value` as a float if it is a finite int or float in [low, high], else ConfigValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigValueError(field, f"must be a number, got {value!r}")
    if not low <= value <= high:  # also refuses NaN, and inf (JSON's 1e999)
        raise ConfigValueError(field, f"must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


MAX_CONFIG_BYTES = 1 << 20
"""params.json and imagebind_config.json are a few hundred bytes; a larger file is refused unread."""


def read_json_object(path: str | Path) -> dict:
    """The JSON object in a small config file. Refused with a CheckpointError naming the file: a file
    over MAX_CONFIG_BYTES (checked before parsing), invalid UTF-8 or JSON, NaN/Infinity (not JSON),
    a key given twice (which value would win is not obvious), too deep nesting, or a non-object."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: not found", file=path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes: not a config file")
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not a readable JSON config ({e})", file=path) from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, not {type(value).__name__}", file=path)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if repeated:
        raise ValueError(f"keys given more than once: {', '.join(repeated)}")
    return dict(pairs)


@dataclass(frozen=True)
class LoadResult:
    """What `load_into` did: keys the file lacked (all allowed) and keys it had that were ignored."""

    loaded: list[str]
    missing: list[str]
    ignored: list[str]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (.pth/.pt/.bin or .safetensors), unwrapping `{"model": ...}`; tensors on CPU.

    Raises MissingFileError / CheckpointError naming the file for anything that is not a plain
    mapping of names to tensors.
    """
    path = Path(path)
    mapped = False
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise MissingFileError(f"{path}: checkpoint not found", file=path)
        sd = _load_safetensors(path)
    else:
        sd, mapped = read_torch_file(path, mmap=True)
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    check_tensors(sd, path)
    return MappedStateDict(sd) if mapped else dict(sd)


def adapter_sizes(sd: Mapping[str, torch.Tensor], *, file: str | Path) -> tuple[int, int]:
    """(query_layer, feature_dim) of an ImageBind-LLM adapter state dict: the rows of `prefix_query.weight`
    (one per adapted layer) and the columns of `image_bind_proj.weight`. CheckpointError naming `file`
    when either is absent or not a non-empty matrix."""
    for key in ("prefix_query.weight", "image_bind_proj.weight"):
        if key not in sd:
            raise CheckpointError(f"{file}: not an ImageBind-LLM adapter checkpoint (no {key})", file=file,
                                  missing=[key])
        if sd[key].ndim != 2 or 0 in sd[key].shape:
            raise CheckpointError(f"{file}: {key} has shape {list(sd[key].shape)}, not a non-empty matrix",
                                  file=file, field=key)
    return sd["prefix_query.weight"].shape[0], sd["image_bind_proj.weight"].shape[1]


def check_tensors(sd, path: str | Path) -> None:
    """CheckpointError naming `path` unless `sd` is a mapping of str names to tensors."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}", file=path)
    bad = sorted(str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(bad)}", file=path)


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's weights-only unpickler names the class or function it refused (both of its messages:
"unsupported GLOBAL posix.system whose module ..." and "Unsupported global: GLOBAL x.Y was not ...")."""


def read_torch_file(path: str | Path, *, mmap: bool = False):
    """(object, whether its tensors are mapped from the file) of a `torch.save` file, read with
    `torch.load(weights_only=True)`: nothing in the file is executed.

    `mmap=True` maps the tensors of a zip-format file (every torch.save since 1.6); a legacy file is
    read into memory. Every failure is a CheckpointError naming the file that says which it is: not
    a PyTorch file at all, truncated or corrupt, or refused because it pickles code or an object
    that is not a tensor container (naming the global torch refused).
    """
    path = Path(path)
    mmap = _torch_format(path) == "zip" and mmap  # torch maps only zip-format files
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), mmap
    except pickle.UnpicklingError as e:
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: it pickles {refused.group(1)}, which is code or an object other than "
                "a tensor; nothing from it was executed. Only weights are accepted.", file=path) from e
        raise CheckpointError(f"{path}: corrupt, or not a weights file: its pickle uses instructions that "
                              f"tensors never need ({_first_line(e)}); nothing from it was executed", file=path) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError,
            AttributeError, IndexError, OverflowError, MemoryError) as e:
        # what a truncated, corrupt or inconsistent archive/pickle/storage raises inside torch.load
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {_first_line(e)})",
                              file=path) from e


def _torch_format(path: Path) -> str:
    """"zip" or "legacy" (a bare pickle stream), from the first bytes and, for a zip, its listing;
    CheckpointError for anything torch.save does not write."""
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint not found", file=path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        names = None
        if head == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {_first_line(e)})",
                              file=path) from e
    if names is not None:
        if not any(name.endswith("data.pkl") for name in names):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (a zip archive without data.pkl)", file=path)
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode, protocol 2..5
        return "legacy"
    what = "it is empty" if not head else "it is neither a zip archive nor a pickle"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what})", file=path)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt, truncated or not a safetensors file ({e})", file=path) from e


def _listing(keys: list) -> str:
    shown = ", ".join(map(str, keys[:MAX_LISTED]))
    return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def _allowed(allowed_missing: Collection[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    if allowed_missing is None:
        return lambda key: False
    if callable(allowed_missing):
        return allowed_missing
    names = frozenset(allowed_missing)
    return names.__contains__


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], *, file: str | Path,
              allowed_missing: Collection[str] | Callable[[str], bool] | None = None,
              ignored_unexpected: Collection[str] = LLAMA_FILE_IGNORED,
              device: torch.device | str | None = None,
              keep_dtype: Callable[[str], bool] | None = None) -> LoadResult:
    """Strictly load `sd` into `module`, converting each tensor to the module's dtype for that entry.

    The module may live on the meta device (built without memory): tensors are then assigned on
    `device` (default CPU). A tensor whose dtype and device already match is used as is (it stays in
    the file mapping), so no second copy is made; so is a float tensor whose key `keep_dtype` accepts,
    in the file's dtype (for weights converted later, layer by layer: `llama.model.for_inference`).
    All checks run before the first assignment.
    `sd` from `load_state_dict` (a `MappedStateDict`) lets the pages of each converted tensor go as
    soon as its copy exists; do not read those source tensors again afterwards (they re-read the file).
    """
    expected = module.state_dict(keep_vars=True)
    is_allowed = _allowed(allowed_missing)
    ignored_set = frozenset(ignored_unexpected)
    unexpected = sorted(k for k in sd if k not in expected and k not in ignored_set)
    ignored = sorted(k for k in sd if k not in expected and k in ignored_set)
    missing_all = sorted(k for k in expected if k not in sd)
    missing = [k for k in missing_all if not is_allowed(k)]
    mismatched = [(k, tuple(sd[k].shape), tuple(expected[k].shape))
                  for k in sorted(sd) if k in expected and sd[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{file}: does not fit {type(module).__name__}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): " + _listing(
                [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in mismatched]))
        raise CheckpointError("; ".join(parts), file=file, missing=missing, unexpected=unexpected,
                              mismatched=mismatched)

    converted = {}
    for key, value in sd.items():
        if key not in expected:
            continue
        target = expected[key]
        dev = torch.device(device) if device is not None else (
            torch.device("cpu") if target.is_meta else target.device)
        dtype = target.dtype if (target.is_floating_point() or not value.is_floating_point()) else value.dtype
        if keep_dtype is not None and value.is_floating_point() and keep_dtype(key):
            dtype = value.dtype
        converted[key] = value.to(device=dev, dtype=dtype)
        if isinstance(sd, MappedStateDict) and converted[key].data_ptr() != value.data_ptr():
            release_pages(value)  # the file's bytes are no longer needed in memory
    module.load_state_dict(converted, strict=False, assign=True)
    logger.info("%s: loaded %d tensors (%d absent as allowed, %d ignored)", file, len(converted),
                len(missing_all), len(ignored))
    return LoadResult(loaded=sorted(converted), missing=missing_all, ignored=ignored)


def meta_tensors(module: nn.Module) -> list[str]:
    """State-dict keys (the files' names) still on the meta device (i.e. never loaded), sorted."""
    return sorted(k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta)
