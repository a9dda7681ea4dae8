"""What the app is asked to load and how it generates: plain dataclasses, read from a config file or the sidebar.

The app starts on the embedded toy model. To use the official ImageBind-LLM 7B weights, give their
paths in the sidebar or in a config file (TOML or JSON) named by `--config` after the script
(`streamlit run ui/app.py -- --config ibllm-ui.toml`) or by the `IBLLM_UI_CONFIG` environment variable:

    [model]
    name = "/weights/7B.pth"              # the ImageBind-LLM adapter checkpoint
    llama_dir = "/weights/llama"          # holds tokenizer.model and 7B/params.json + consolidated.00.pth
    imagebind_ckpt = "/weights/imagebind_w3D.pth"
    knn_index = "/weights/knn.index"      # optional: the visual cache
    device = "cuda"
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

CONFIG_ENV = "IBLLM_UI_CONFIG"


class ConfigError(ValueError):
    """A config file that cannot be read or names unknown settings."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything `ibllm_agent.load` needs; frozen and hashable so it keys the shared model cache."""

    name: str = "toy"
    """"toy" (the embedded toy world) or the path of an ImageBind-LLM adapter checkpoint such as 7B.pth."""
    llama_dir: str | None = None
    """Folder with tokenizer.model and <llama_type>/params.json + consolidated.*.pth (official weights only)."""
    llama_type: str = "7B"
    """Sub-folder of llama_dir holding the LLaMA weights."""
    imagebind_ckpt: str | None = None
    """ImageBind (+ Point-Bind) checkpoint, e.g. imagebind_w3D.pth; None = the loader's default."""
    knn_index: str | None = None
    """FAISS index of cached image features for the visual cache; None = the model's own (the toy ships one)."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda", "cuda:1", ..."""
    dtype: str | None = None
    """"float32", "float16" or "bfloat16"; None lets the loader choose for the device."""

    @property
    def is_toy(self) -> bool:
        return self.name == "toy"

    def load_kwargs(self) -> dict:
        """Keyword arguments for `ibllm_agent.load`, without the ones left at None."""
        kwargs = {"llama_dir": self.llama_dir, "llama_type": self.llama_type,
                  "imagebind_ckpt": self.imagebind_ckpt, "knn_index": self.knn_index,
                  "device": self.device, "dtype": self.dtype}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        # The cache is on whenever an index is known; the toy model carries its own.
        kwargs["knn"] = self.knn_index is not None or self.is_toy
        return kwargs


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of the chat model (upstream defaults: temperature 0.1, top-p 0.75)."""

    temperature: float = 0.0
    """0 is greedy decoding, which makes the toy model's answers repeatable."""
    top_p: float = 0.75
    max_tokens: int = 64
    """Short by default: the toy world answers in one sentence; the 7B can use up to ~400."""
    history: int | None = None
    """Earlier messages sent with each question; None = by model (none for the toy, which was tuned on
    single questions, 6 for real weights)."""


@dataclass(frozen=True)
class CacheSettings:
    """The visual cache (paper §3.3): retrieve similar image features and blend them into the query."""

    enabled: bool = True
    size: int = 10
    """How many neighbours to retrieve (upstream cache_size)."""
    t: float = 20.0
    """Softmax temperature over the neighbours' similarities (upstream cache_t)."""
    weight: float = 0.5
    """Share of the blended neighbours in the final query (upstream cache_weight)."""


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    try:
        import tomllib
    except ModuleNotFoundError as exc:  # Python 3.10
        raise ConfigError(f"{path}: TOML config files need Python 3.11 or later; use a .json file") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _section(data: dict, name: str, cls):
    values = data.get(name, {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown [{name}] settings {unknown}; known: {sorted(known)}")
    return replace(cls(), **values)


@dataclass(frozen=True)
class AppConfig:
    """The app's starting settings: from a config file if one is given, else the defaults (toy model)."""

    model: ModelSpec = ModelSpec()
    generation: GenerationSettings = GenerationSettings()
    cache: CacheSettings = CacheSettings()
    source: str | None = None
    """The config file these settings came from, for the status line."""

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AppConfig:
        data = _read_file(Path(path))
        unknown = sorted(set(data) - {"model", "generation", "cache"})
        if unknown:
            raise ConfigError(f"unknown sections {unknown} in {path}; known: model, generation, cache")
        return cls(model=_section(data, "model", ModelSpec),
                   generation=_section(data, "generation", GenerationSettings),
                   cache=_section(data, "cache", CacheSettings), source=str(path))


def config_path(argv: list[str], environ: dict | os._Environ = os.environ) -> str | None:
    """The config file named by `--config` in the script's arguments, else by $IBLLM_UI_CONFIG."""
    parser = argparse.ArgumentParser(prog="ui/app.py", add_help=False)
    parser.add_argument("--config")
    args, _ = parser.parse_known_args(argv)
    return args.config or environ.get(CONFIG_ENV) or None
