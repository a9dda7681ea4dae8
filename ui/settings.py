"""What the app is asked to load and how it generates: plain dataclasses, read from a config file or the sidebar.

The app starts on the embedded toy model. To use the official ImageBind-LLM 7B weights, give their
paths in the sidebar or in a config file (TOML or JSON) named by `--config` after the script
(`streamlit run ui/app.py -- --config ibllm-ui.toml`) or by the `IBLLM_UI_CONFIG` environment variable:

    [model]
    name = "/weights/7B.pth"              # the ImageBind-LLM adapter checkpoint
    llama_dir = "/weights/llama"          # holds tokenizer.model and 7B/params.json + consolidated.00.pth
    imagebind_ckpt = "/weights/imagebind_w3D.pth"
    visual_cache_index = "/weights/knn.index"   # optional: the visual cache
    unclip_dir = "/weights/stable-diffusion-2-1-unclip"   # optional: pictures (the Draw button)
    device = "cuda"

    [generation]                          # ibllm_agent.GenerationParams
    temperature = 0.1
    max_tokens = 256

    [visual_cache]                        # ibllm_agent.VisualCacheParams
    size = 10

    [chat]
    history = 6                           # earlier messages sent with each question
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ibllm_agent.params import GenerationParams, ParamsError, VisualCacheParams

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
    visual_cache_index: str | None = None
    """FAISS index of cached image features for the visual cache; None = the model's own (the toy ships one)."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda", "cuda:1", ..."""
    dtype: str | None = None
    """"float32", "float16" or "bfloat16"; None lets the loader choose for the device."""
    unclip_dir: str | None = None
    """Local Stable unCLIP folder (stabilityai/stable-diffusion-2-1-unclip) for the Draw button with the
    official weights; the toy model draws with its own decoder."""

    @property
    def is_toy(self) -> bool:
        return self.name == "toy"

    def load_kwargs(self) -> dict:
        """Keyword arguments for `ibllm_agent.load`, without the ones left at None."""
        kwargs = {"llama_dir": self.llama_dir, "llama_type": self.llama_type,
                  "imagebind_ckpt": self.imagebind_ckpt, "knn_index": self.visual_cache_index,
                  "device": self.device, "dtype": self.dtype}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        # `load`'s (the reference's) names: attach a cache whenever an index is known; the toy carries its own
        kwargs["knn"] = self.visual_cache_index is not None or self.is_toy
        return kwargs


APP_GENERATION = GenerationParams(temperature=0.0, max_tokens=64)
"""Where the app's sliders start: greedy (the same question gives the same answer, which someone comparing
inputs expects) and short (the toy world answers in one sentence; the 7B can use up to ~400)."""
APP_VISUAL_CACHE = VisualCacheParams(enabled=True)
"""The cache is on in the app whenever the model has one (the toy ships one)."""


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


def _section(data: dict, name: str, default):
    """`default` (a frozen dataclass) with the settings of section [name] applied, checked."""
    values = data.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of settings, got {values!r}")
    known = {f.name for f in fields(default)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown [{name}] settings {unknown}; known: {sorted(known)}")
    try:
        return replace(default, **values)
    except (ParamsError, TypeError) as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc


@dataclass(frozen=True)
class ChatSettings:
    """How the conversation is sent."""

    history: int | None = None
    """Earlier messages sent with each question; None = by model (none for the toy, which was tuned on
    single questions, 6 for real weights)."""


SECTIONS = ("model", "generation", "visual_cache", "chat")


@dataclass(frozen=True)
class AppConfig:
    """The app's starting settings: from a config file if one is given, else the defaults (toy model)."""

    model: ModelSpec = ModelSpec()
    generation: GenerationParams = APP_GENERATION
    visual_cache: VisualCacheParams = APP_VISUAL_CACHE
    chat: ChatSettings = ChatSettings()
    source: str | None = None
    """The config file these settings came from, for the status line."""

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AppConfig:
        data = _read_file(Path(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file holds sections {', '.join(SECTIONS)}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown sections {unknown} in {path}; known: {', '.join(SECTIONS)}")
        return cls(model=_section(data, "model", ModelSpec()), generation=_section(data, "generation", APP_GENERATION),
                   visual_cache=_section(data, "visual_cache", APP_VISUAL_CACHE),
                   chat=_section(data, "chat", ChatSettings()), source=str(path))


def config_path(argv: list[str], environ: dict | os._Environ = os.environ) -> str | None:
    """The config file named by `--config` in the script's arguments, else by $IBLLM_UI_CONFIG."""
    parser = argparse.ArgumentParser(prog="ui/app.py", add_help=False)
    parser.add_argument("--config")
    args, _ = parser.parse_known_args(argv)
    return args.config or environ.get(CONFIG_ENV) or None
