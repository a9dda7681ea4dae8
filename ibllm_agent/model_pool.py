"""One loaded ImageBindLLM per name and load options, shared by every LangChain object that asks.

`ChatImageBindLLM(model="toy")`, `ImageBindEmbeddings(model="toy")` and `get_tools("toy")` end up
with the same model in memory; passing an already-loaded `ImageBindLLM` shares it explicitly.
`PooledModelFields` holds the constructor fields those classes share. With `base_url` (remote mode) they
speak to an `ibllm serve` instead (`ibllm_agent.remote`) and nothing is loaded here.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr, model_validator

from ibllm_agent.sources import DEFAULT_MAX_BYTES, SourcePolicy

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def shared_model(model: Any, **load_kwargs) -> Any:
    """`model` if it is already a loaded model, else the pooled `ibllm_agent.load(model, **load_kwargs)`.

    Options left at None are not part of the key, so `shared_model("toy")` and
    `shared_model("toy", knn_index=None)` are the same model.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model
    from ibllm_agent.factory import load  # the model pulls in torch-heavy modules; only when needed

    options = {k: v for k, v in load_kwargs.items() if v is not None}
    key = (os.fspath(model), tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _LOCK:  # one load at a time: two threads asking for "toy" must not load it twice
        if key not in _MODELS:
            _MODELS[key] = load(os.fspath(model), **options)
        return _MODELS[key]


def clear() -> None:
    """Forget pooled models (they are freed once no LangChain object holds them)."""
    with _LOCK:
        _MODELS.clear()


class PooledModelFields(BaseModel):
    """Fields the LangChain classes share: which model to load (from the pool) and where media may come from."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: Any = "toy"
    """A model name ("toy", "7B"), a path to an adapter checkpoint, or an already-loaded `ImageBindLLM`."""
    model_name: str | None = None
    """Name reported in metadata and traces; defaults to the loaded model's name."""
    llama_dir: str | None = None
    """Folder with `tokenizer.model` and `<llama_type>/params.json` (official weights only)."""
    llama_type: str | None = None
    """LLaMA size folder inside `llama_dir`, e.g. "7B"."""
    imagebind_ckpt: str | None = None
    """ImageBind (+ Point-Bind) checkpoint for official weights."""
    visual_cache_index: str | None = None
    """A FAISS index to attach to the model as its visual cache, or "default" for the model's own (the toy's
    shipped cache; `knn.index` in the download folder for official weights). None: no cache."""
    device: str | None = None
    """Torch device to load the model on ("auto", "cpu", "cuda", "mps"); default: auto for official weights
    (CUDA, then MPS, then the CPU), the CPU for the toy."""
    dtype: str | None = None
    """Weights dtype ("auto", "float32", "float16", "bfloat16"); default auto: float16 on a GPU, bfloat16 on a
    CPU with native bfloat16 for official weights, else float32 (the toy: float32 on the CPU)."""
    quantize: str | None = None
    """"int8" or "int4": weight-only quantisation of LLaMA's linear layers (`ibllm_agent.load(quantize=...)`)."""
    max_seq_len: int | None = None
    """Context window (prompt + answer) to load the model with; default the loader's (2048)."""

    media_roots: list[str] | None = None
    """Folders local media must lie in; None allows any local file (trusted callers only)."""
    allow_urls: bool = False
    """Fetch http(s) media URLs."""
    max_media_bytes: int = DEFAULT_MAX_BYTES
    """Largest media file or inline data accepted."""
    media_policy: SourcePolicy | None = None
    """A ready `SourcePolicy` (to set refuse_hard_links, allow_private_networks or url_timeout); it replaces
    media_roots, allow_urls and max_media_bytes, which are set from it."""

    base_url: str | None = None
    """The `/v1` URL of an `ibllm serve` ("http://host:8000/v1"): remote mode. Requests go there, no model
    is loaded here, and the load options above (`llama_dir`, `device`, ...) are the server's, so they are
    refused; the media options still apply (local files are read here and sent inline)."""
    api_key: SecretStr | None = None
    """Remote mode only: the server's key (default $IBLLM_API_KEY)."""
    max_retries: int | None = None
    """Remote mode only: retries of transient failures (connection errors, 429, 503); default 2."""

    _llm: Any = PrivateAttr(default=None)
    _policy: SourcePolicy = PrivateAttr(default=None)
    _remote: Any = PrivateAttr(default=None)

    LOCAL_ONLY: ClassVar[tuple[str, ...]] = ("llama_dir", "llama_type", "imagebind_ckpt", "visual_cache_index",
                                             "device", "dtype", "max_seq_len")
    """Fields that configure the local model: in remote mode they would be ignored, so they are refused."""

    @model_validator(mode="after")
    def _attach_model(self):
        if self.media_policy is not None:  # the fields say what the policy does
            roots = self.media_policy.roots
            self.media_roots = [str(r) for r in roots] if roots is not None else None
            self.allow_urls, self.max_media_bytes = self.media_policy.allow_urls, self.media_policy.max_bytes
        self._policy = self.media_policy or SourcePolicy(
            roots=tuple(self.media_roots) if self.media_roots is not None else None,
            allow_urls=self.allow_urls, max_bytes=self.max_media_bytes)
        if self.base_url is not None:
            return self._attach_server()
        remote_only = [name for name in ("api_key", "max_retries") if getattr(self, name) is not None]
        if remote_only:
            raise ValueError(f"{', '.join(remote_only)}: options of remote mode (they need base_url); a local "
                             "model has no key to send and nothing transient to retry")
        index = self.visual_cache_index
        self._llm = shared_model(self.model, llama_dir=self.llama_dir, llama_type=self.llama_type,
                                 imagebind_ckpt=self.imagebind_ckpt, knn=True if index else None,
                                 knn_index=index if index and index != "default" else None,
                                 device=self.device, dtype=None if self.dtype == "auto" else self.dtype,
                                 quantize=self.quantize, max_seq_len=self.max_seq_len)
        if self.model_name is None:
            self.model_name = self._llm.card.name or str(self.model)
        return self

    def _attach_server(self):
        from ibllm_agent.remote import RemoteClient

        local = sorted(set(self.LOCAL_ONLY) & self.model_fields_set)
        if local:
            raise ValueError(f"{', '.join(local)}: options of a local model; with base_url the server's model "
                             "answers (set them on `ibllm serve`)")
        if not isinstance(self.model, str):
            raise ValueError("with base_url, model is the name the server serves (a string), not a loaded model")
        key = self.api_key.get_secret_value() if self.api_key else None
        self._remote = RemoteClient(self.base_url, api_key=key, timeout=getattr(self, "timeout", None),
                                    max_retries=2 if self.max_retries is None else self.max_retries)
        if self.model_name is None:
            self.model_name = self.model
        return self

    @property
    def llm(self) -> Any:
        """The underlying `ImageBindLLM` (shared with other objects built from the same name and options);
        None in remote mode."""
        return self._llm

    @property
    def remote(self) -> Any:
        """The `RemoteClient` of remote mode (None when the model is local)."""
        return self._remote
