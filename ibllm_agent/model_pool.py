"""One loaded ImageBindLLM per name and load options, shared by every LangChain object that asks.

`ChatImageBindLLM(model="toy")`, `ImageBindEmbeddings(model="toy")` and `get_tools("toy")` end up
with the same model in memory; passing an already-loaded `ImageBindLLM` shares it explicitly.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def shared_model(model: Any, **load_kwargs) -> Any:
    """`model` if it is already a loaded model, else the pooled `ibllm_agent.load(model, **load_kwargs)`.

    Options left at None are not part of the key, so `shared_model("toy")` and
    `shared_model("toy", knn_index=None)` are the same model.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model
    from ibllm_agent.model import load  # the model pulls in torch-heavy modules; only when needed

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
