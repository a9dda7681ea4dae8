"""What the app is asked to load and how it generates: plain dataclasses, read from a config file or the sidebar.

The app starts on the embedded toy model. To use the official ImageBind-LLM 7B weights, name them in a
config file (TOML or JSON) given by `ibllm ui --config ibllm-ui.toml`, by `--config` after the script
(`streamlit run ui/app.py -- --config ibllm-ui.toml`) or by the `IBLLM_UI_CONFIG` environment variable.
The config file is trusted (the operator writes it); what a visitor types in the sidebar is not: paths
typed there are accepted only inside the folders of `[app] model_folders` (see `confine`).

    [model]
    server_url = "http://gpu-host:8000/v1"   # or: an `ibllm serve` answers (also $IBLLM_SERVER_URL), nothing loads
    name = "/weights/7B.pth"              # the ImageBind-LLM adapter checkpoint
    llama_dir = "/weights/llama"          # holds tokenizer.model and 7B/params.json + consolidated.00.pth
    imagebind_ckpt = "/weights/imagebind_w3D.pth"
    visual_cache_index = "/weights/knn.index"   # optional: the visual cache
    unclip_dir = "/weights/stable-diffusion-2-1-unclip"   # optional: pictures (the Draw button)
    device = "auto"                       # or "cpu", "cuda", "mps"
    quantize = "int8"                     # optional: "int8" / "int4" weights (a 7B on a laptop)

    [generation]                          # ibllm_agent.GenerationParams
    temperature = 0.1
    max_tokens = 256

    [visual_cache]                        # ibllm_agent.VisualCacheParams
    size = 10

    [chat]
    history = 6                           # earlier messages sent with each question

    [app]
    model_folders = ["/weights"]          # where the sidebar may load other weights from; none = it may not
    debug = false                         # show tracebacks in the browser
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ibllm_agent.params import GenerationParams, ParamsError, VisualCacheParams

CONFIG_ENV = "IBLLM_UI_CONFIG"
SERVER_ENV = "IBLLM_SERVER_URL"


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
    device: str = "auto"
    """Torch device: "auto" (the loader's choice: CUDA, then Apple MPS, then the CPU for official weights; the
    CPU for the toy), "cpu", "cuda", "cuda:1", "mps"."""
    dtype: str | None = None
    """"float32", "float16" or "bfloat16"; None lets the loader choose for the device ("auto")."""
    quantize: str | None = None
    """"int8" or "int4": weight-only quantisation of LLaMA's linear layers (less memory, faster CPU decoding)."""
    unclip_dir: str | None = None
    """Local Stable unCLIP folder (stabilityai/stable-diffusion-2-1-unclip) for the Draw button with the
    official weights; the toy model draws with its own decoder."""
    server_url: str | None = field(default_factory=lambda: os.environ.get(SERVER_ENV) or None)
    """The /v1 URL of an `ibllm serve` ($IBLLM_SERVER_URL by default): the app asks it and loads no model
    (the fields above are then the server's business); its key comes from $IBLLM_API_KEY."""

    @property
    def is_toy(self) -> bool:
        return self.name == "toy"

    def load_kwargs(self) -> dict:
        """Keyword arguments for `ibllm_agent.load`, without the ones left at None."""
        kwargs = {"llama_dir": self.llama_dir, "llama_type": self.llama_type,
                  "imagebind_ckpt": self.imagebind_ckpt, "knn_index": self.visual_cache_index,
                  "device": None if self.device == "auto" else self.device, "dtype": self.dtype,
                  "quantize": self.quantize}
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
    except (ParamsError, ConfigError, TypeError) as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc


@dataclass(frozen=True)
class ChatSettings:
    """How the conversation is sent."""

    history: int | None = None
    """Earlier messages sent with each question; None = by model (none for the toy, which was tuned on
    single questions, 6 for real weights)."""


@dataclass(frozen=True)
class AppSettings:
    """What visitors may do: load other weights from these folders only; see tracebacks only in debug."""

    model_folders: tuple[str, ...] = ()
    """Absolute folders (their real paths) that paths typed in the sidebar must lie in; empty = the sidebar
    offers only the configured model and the toy, and takes no paths at all."""
    debug: bool = False
    """Show tracebacks under the app's error messages and in Streamlit's error boxes (`ibllm ui --debug`)."""

    def __post_init__(self):
        folders = self.model_folders
        if isinstance(folders, str) or not isinstance(folders, list | tuple):
            raise ConfigError(f"model_folders must be a list of folders, got {folders!r}")
        resolved = []
        for folder in folders:
            if not isinstance(folder, str) or not os.path.isabs(os.path.expanduser(folder)):
                raise ConfigError(f"model_folders: {folder!r} is not an absolute path")
            resolved.append(os.path.realpath(os.path.expanduser(folder)))
        object.__setattr__(self, "model_folders", tuple(resolved))
        if not isinstance(self.debug, bool):
            raise ConfigError(f"debug must be true or false, got {self.debug!r}")


class PathRefused(ValueError):
    """A path typed in the sidebar that lies outside the model folders (or typed when there are none)."""


def confine(typed: str, folders: tuple[str, ...]) -> str:
    """The real path of `typed` (symlinks resolved, relative paths taken from the first folder) if it lies
    inside one of `folders` (real paths, as `AppSettings` keeps them), else `PathRefused`.

    Decided before anything asks whether the file exists (the only look at the disk is `realpath` reading
    symlinks), with one message for every outside path, existing or not: the answer tells a visitor nothing
    about the server's files outside the folders."""
    if not folders:
        raise PathRefused("loading other weights is off (no [app] model_folders in the config)")
    outside = PathRefused(f"that path is outside the model folders ({', '.join(folders)})")
    if "\0" in typed:
        raise outside
    real = os.path.realpath(os.path.join(folders[0], typed))  # an absolute `typed` replaces folders[0]
    if not any(Path(real).is_relative_to(folder) for folder in folders):
        raise outside
    return real


SECTIONS = ("model", "generation", "visual_cache", "chat", "app")


@dataclass(frozen=True)
class AppConfig:
    """The app's starting settings: from a config file if one is given, else the defaults (toy model)."""

    model: ModelSpec = field(default_factory=ModelSpec)  # read $IBLLM_SERVER_URL when the app starts
    generation: GenerationParams = APP_GENERATION
    visual_cache: VisualCacheParams = APP_VISUAL_CACHE
    chat: ChatSettings = ChatSettings()
    app: AppSettings = AppSettings()
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
                   chat=_section(data, "chat", ChatSettings()), app=_section(data, "app", AppSettings()),
                   source=str(path))


def _script_args(argv: list[str]) -> argparse.Namespace:
    """The app script's own arguments (after `--` on the `streamlit run` line): --config FILE, --debug."""
    parser = argparse.ArgumentParser(prog="ui/app.py", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_known_args(argv)[0]


def config_path(argv: list[str], environ: dict | os._Environ = os.environ) -> str | None:
    """The config file named by `--config` in the script's arguments, else by $IBLLM_UI_CONFIG."""
    return _script_args(argv).config or environ.get(CONFIG_ENV) or None


def debug_flag(argv: list[str]) -> bool:
    """`--debug` in the script's arguments (`ibllm ui --debug` passes it)."""
    return _script_args(argv).debug
