"""What a loaded model is and how it is shared: its name, whether it is the toy, its files, its lock.

Kept apart from the `nn.Module`: none of it is part of the network, and `state_dict`, `.to()` and
`deepcopy` have no business with a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ModelCard:
    """Identity and serving state of one loaded `ImageBindLLM` (`model.card`)."""

    name: str = ""
    """"toy", "tiny", "7B", or the stem of the adapter file it was loaded from."""
    is_toy: bool = False
    """The shipped toy world: every place a user meets it says so."""
    files: dict[str, Path] = field(default_factory=dict)
    """The files it was built from ("llama", "adapter", "imagebind", "knn_index")."""
    quantize: str | None = None
    """"int8" / "int4" when LLaMA's linear weights are quantised (`load(quantize=...)` or a quantised file)."""
    placement: str = ""
    """What the load chose for device, dtype and quantisation, and why (`Placement.describe`)."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    """Held around every use of the model's tensors by code that shares it between threads (one decoding
    step at a time, so batched requests and streams interleave fairly)."""

    def banner(self) -> str:
        """One line saying what answers, for the CLI, the app and the server."""
        if self.is_toy:
            return ("[toy world] This is the small model shipped with ibllm-agent, trained on a synthetic world; it "
                    "only knows that world's concepts. For the real ImageBind-LLM: `ibllm download 7B` (and "
                    "imagebind_w3D), then `--model 7B --llama-dir /path/to/llama` (Meta's LLaMA-1 7B weights).")
        if self.name == "tiny":
            return "[tiny] Random weights for tests: the output is noise."
        return f"[{self.name}]"
