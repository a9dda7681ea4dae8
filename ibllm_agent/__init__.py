"""ImageBind-LLM for LangChain, Chroma, Streamlit and Jupyter.

Drop-in for the upstream `llama` package of ImageBind-LLM::

    import ibllm_agent as llama
    import ibllm_agent.data as data
    model = llama.load("toy")            # or llama.load("7B.pth", "/path/to/llama")

Names are imported lazily so that `import ibllm_agent` stays fast and does not pull in
LangChain, Chroma or Streamlit until they are used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "ibllm_agent.factory",
    "ImageBindLLM": "ibllm_agent.model",
    "available_models": "ibllm_agent.pretrained",
    "download": "ibllm_agent.pretrained",
    "format_prompt": "ibllm_agent.generation",
    "Tokenizer": "ibllm_agent.llama.tokenizer",
    "ModelArgs": "ibllm_agent.llama.model",
    "Transformer": "ibllm_agent.llama.model",
    "ModalityType": "ibllm_agent.imagebind.model",
    "ImageBindModel": "ibllm_agent.imagebind.model",
    "load_media": "ibllm_agent.media",
    "MediaInput": "ibllm_agent.media",
    "MediaError": "ibllm_agent.media",
    "CheckpointError": "ibllm_agent.checkpoint",
    "ChatImageBindLLM": "ibllm_agent.chat_models",
    "ImageBindEmbeddings": "ibllm_agent.embeddings",
    "GenerationParams": "ibllm_agent.params",
    "VisualCacheParams": "ibllm_agent.params",
    "get_tools": "ibllm_agent.perception_tools",
    "build_perception_graph": "ibllm_agent.graphs",
    "create_perception_agent": "ibllm_agent.graphs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("data", "media", "cache", "imagebind", "llama", "train"):
        return importlib.import_module(f"ibllm_agent.{name}")
    raise AttributeError(f"module 'ibllm_agent' has no attribute {name!r}")


def __dir__():
    return __all__
