"""ImageBind-LLM's two training phases on top of `ImageBindLLM`, with the reference's semantics.

* phase "pretrain" (image-caption pairs): the LLaMA is built without biases and LoRA; trainable are
  the bind network (`image_bind_*`), `prefix_query` and the LLaMA gates.
* phase "finetune" (instructions): the LLaMA has biases and LoRA; trainable are its norms, biases and
  LoRA; the bind network, prefix and gates stay as pretraining left them.

ImageBind is frozen in both. The loss is next-token cross-entropy on the answer tokens only (labels
0 are ignored, as the reference's `CrossEntropyLoss(ignore_index=0)`). Checkpoints hold the keys of
the official adapter file (`{"model": ...}`): the bind network, prefix, and `llama.*` gates, biases,
norms and LoRA, which is what `convert_ckpt.py` keeps upstream, so they load with `ibllm_agent.load`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibllm_agent.train.datasets import trim_padding
from ibllm_agent.train.engine import TrainConfig, TrainResult, atomic_path, restore_parameters, train

logger = logging.getLogger(__name__)

PHASES = ("pretrain", "finetune")


def trainable_parameters(model: nn.Module, phase: str = "finetune") -> dict[str, nn.Parameter]:
    """The reference's split, by official key: finetune = LLaMA norms, biases, LoRA; pretrain = gates,
    bind network, prefix."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
    trainable = {}
    for name, p in model.state_dict(keep_vars=True).items():
        if not isinstance(p, nn.Parameter):
            continue
        llama = name.startswith("llama.")
        if phase == "finetune" and llama and any(s in name for s in ("norm", "bias", "lora")):
            trainable[name] = p
        elif phase == "pretrain" and ((llama and "gate" in name) or name.startswith(("image_bind_", "prefix_query."))):
            trainable[name] = p
    return trainable


def set_trainable(model: nn.Module, phase: str = "finetune") -> None:
    """Freeze everything but `trainable_parameters(model, phase)`, which are made float32 and trainable."""
    model.requires_grad_(False)
    for p in trainable_parameters(model, phase).values():
        p.data = p.data.float()
        p.requires_grad_(True)


def is_adapter_key(name: str) -> bool:
    """Keys of the official adapter file: bind network, prefix, and llama.* gate/bias/norm/LoRA."""
    if name.startswith(("image_bind_", "prefix_query.")):
        return True
    return name.startswith("llama.") and any(s in name for s in ("gate", "bias", "norm", "lora"))


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter part of an `ImageBindLLM`'s state dict, detached, on CPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if is_adapter_key(k)}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write `{"model": adapter_state_dict(model)}` (the layout of the official 7B.pth)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": adapter_state_dict(model)}, tmp)
    return path


class AdapterObjective(nn.Module):
    """`forward(batch) -> loss` for a batch of the training datasets.

    batch: "tokens" [B, L] and "labels" [B, L] (0 = ignored), and either "image" [B, 3, 224, 224]
    (run through the frozen ImageBind) or "feature" [B, D] (ImageBind outputs computed beforehand).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> AdapterObjective:
        super().train(mode)
        self.model.image_bind.eval()  # frozen: no stochastic depth, BatchNorm keeps its statistics
        return self

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        model = self.model
        if "feature" in batch:
            feature = batch["feature"]
        else:
            with torch.no_grad():
                feature = model.image_bind({"vision": batch["image"].to(model.dtype)})["vision"]
        visual_query = model.bind(F.normalize(feature.float(), dim=-1))  # (B, 1, dim)
        tokens, labels = trim_padding(batch["tokens"], batch["labels"])
        logits = model(tokens, visual_query)  # (B, L, vocab) float32
        logits, labels = logits[:, :-1], labels[:, 1:]
        if not bool((labels != 0).any()):  # nothing to learn in this batch (all cut by max_words)
            return logits.mean() * 0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=0)


def run_phase(model: nn.Module, dataset, phase: str, cfg: TrainConfig) -> TrainResult:
    """Train `model` (an ImageBindLLM built for `phase`) on `dataset` with the phase's trainable set."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    set_trainable(model, phase)
    objective = AdapterObjective(model)
    return train(objective, dataset, cfg, state_fn=lambda: adapter_state_dict(model),
                 restore_fn=lambda state: restore_parameters(model, state), name=phase)


def build_for_training(llama_dir: str | Path, llama_type: str, imagebind_ckpt: str | Path, phase: str, *,
                       adapter: str | Path | None = None, seed: int = 0, max_seq_len: int = 2048) -> nn.Module:
    """An `ImageBindLLM` for `phase` from Meta's LLaMA files and an ImageBind checkpoint, with the
    adapter initialised from `adapter` (e.g. the pretrain result before finetuning) or, without one,
    as the reference initialises it: PyTorch's default Linear init for the bind network, a standard
    normal `prefix_query` (nn.Embedding's default), zero gates, zero LoRA second factors. The number
    of adapted layers (`query_layer`) is all of them, as upstream for 7B."""
    from ibllm_agent.checkpoint import ADAPTER_ONLY_LLAMA_KEY, adapter_sizes, load_into, load_state_dict
    from ibllm_agent.factory import read_imagebind, read_llama
    from ibllm_agent.model import ImageBindLLM

    finetune = phase == "finetune"
    # the model below is built with real (random) weights: read_llama checks its sizes against the file first
    tokenizer, args, llama_file, llama_sd = read_llama(llama_dir, llama_type, phase, max_seq_len=max_seq_len)
    imagebind_sd, ib_args = read_imagebind(imagebind_ckpt)
    adapter_sd = load_state_dict(adapter) if adapter is not None else {}
    query_layer = adapter_sizes(adapter_sd, file=adapter)[0] if adapter_sd else args.n_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageBindLLM(args, tokenizer, ib_args, query_layer=query_layer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate") or "_l2." in name or (name.startswith("llama.") and name.endswith(".bias")):
                p.zero_()
    load_into(model.llama, llama_sd, file=llama_file, allowed_missing=ADAPTER_ONLY_LLAMA_KEY.match)
    load_into(model.image_bind, imagebind_sd, file=imagebind_ckpt, ignored_unexpected=())
    if adapter_sd:
        # a pretrain adapter has no bias/LoRA (finetune keeps their fresh init); a finetune adapter
        # loaded into a pretrain model would lose them: refuse that
        load_into(model, adapter_sd, file=adapter,
                  allowed_missing=lambda k: not is_adapter_key(k) or (finetune and any(
                      s in k for s in ("lora", "bias"))))
    return model
