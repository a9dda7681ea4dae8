"""One loaded ImageBindLLM per name and load options, shared by every LangChain object that asks.

`ChatImageBindLLM(model="toy")`, `ImageBindEmbeddings(model="toy")` and `get_tools("toy")` end up
with the same model in memory; passing an already-loaded `ImageBindLLM` shares it explicitly.
`PooledModelFields` holds the constructor fields those classes share.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

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

    _llm: Any = PrivateAttr(default=None)
    _policy: SourcePolicy = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _attach_model(self):
        index = self.visual_cache_index
        self._llm = shared_model(self.model, llama_dir=self.llama_dir, llama_type=self.llama_type,
                                 imagebind_ckpt=self.imagebind_ckpt, knn=True if index else None,
                                 knn_index=index if index and index != "default" else None,
                                 device=self.device, dtype=None if self.dtype == "auto" else self.dtype,
                                 quantize=self.quantize, max_seq_len=self.max_seq_len)
        if self.model_name is None:
            self.model_name = self._llm.card.name or str(self.model)
        self._policy = SourcePolicy(roots=tuple(self.media_roots) if self.media_roots is not None else None,
                                    allow_urls=self.allow_urls, max_bytes=self.max_media_bytes)
        return self

    @property
    def llm(self) -> Any:
        """The underlying `ImageBindLLM` (shared with other objects built from the same name and options)."""
        return self._llm
