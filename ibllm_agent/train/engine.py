"""The training loop shared by every stage: AdamW, linear warmup + cosine decay, gradient accumulation,
mixed precision on CUDA, DDP under `torchrun` (gloo on CPU, NCCL on GPU), periodic checkpoints with
resume, a progress bar and a JSON-lines loss log.

A stage hands over an `nn.Module` whose `forward(batch)` returns the scalar loss, with
`requires_grad` set on exactly the parameters to train, plus a function that returns the state dict
to save (e.g. the adapter keys in the official `{"model": ...}` layout). Checkpoints hold that dict
under "model" (so they load wherever the official files do) and the optimiser state, step and config
under other keys for resuming.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from ibllm_agent.checkpoint import CheckpointError, check_tensors, read_torch_file

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings of one stage."""

    output_dir: str = "output"
    """Where checkpoints (`checkpoint-<step>.pth`, `checkpoint-last.pth`) and `log.jsonl` go."""
    steps: int = 1000
    """Optimiser steps (each of `batch_size * accum_iter * world_size` samples)."""
    batch_size: int = 8
    """Samples per process per forward pass."""
    accum_iter: int = 1
    """Forward/backward passes per optimiser step (gradient accumulation)."""
    lr: float = 1e-3
    """Peak learning rate, reached after the warmup."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 50
    """Linear warmup from 0 to `lr`."""
    weight_decay: float = 0.02
    """AdamW decoupled weight decay; not applied to biases, norms, gates and 1-d parameters."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (the upstream scripts' values)."""
    clip_grad: float | None = 1.0
    """Gradient-norm clipping, None to disable."""
    amp: bool = True
    """Mixed precision (bf16 where supported, else fp16 with a loss scaler) on CUDA; ignored on CPU."""
    save_every: int = 0
    """Save a numbered checkpoint every this many steps (0: only the last one)."""
    log_every: int = 10
    """Write the running loss to the log every this many steps."""
    seed: int = 0
    """Seed of the data order and of any randomness in the stage (offset by rank)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    resume: str | None = None
    """A checkpoint to continue from (model dict, optimiser state and step)."""
    progress: bool = True
    """Show a progress bar on rank 0."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a run did."""

    losses: list[float] = field(default_factory=list)
    """Mean loss of every optimiser step of this run."""
    step: int = 0
    """The global step reached (after resuming, counts the earlier steps too)."""
    checkpoint: str | None = None
    """The last checkpoint written (rank 0), if any."""
    seconds: float = 0.0


# -------------------------------------------------------------------------------------------------
# Distributed helpers
# -------------------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; initialises the process group once.

    Without torchrun (no WORLD_SIZE) this is a single process on CUDA if present, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return rank, world, device


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then half-cosine down to `min_lr` at `steps`."""
    return cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)


def cosine_lr(step: int, lr: float, warmup_steps: int, steps: int, min_lr: float = 0.0) -> float:
    """The schedule of `lr_at` for loops that are not a `TrainConfig` stage (the toy image decoder)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, gates, 1-d)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or "norm" in name or name.endswith("gate"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def _infinite(loader: DataLoader, sampler):
    epoch = 0
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# -------------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name in `path`'s folder that replaces `path` when the block succeeds (and is removed if not).

    Rewriting a file in place corrupts it for a process that has it memory-mapped (a server holding the
    previous imagebind.pth read NaN features); after a rename that process keeps the old bytes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
                    step: int, cfg: TrainConfig) -> Path:
    """`{"model": ..., "optimizer": ..., "step": ..., "config": ...}`, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict = {"model": {k: v.detach().cpu().clone() for k, v in model_state.items()}, "step": step,
                     "config": cfg.to_dict()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint or an adapter file, read safely (no pickled code): a dict with the "model"
    state dict and, optionally, "optimizer", "step" and "config". Anything else (missing, unreadable,
    unsafe, another layout, a step that is not a count) is a CheckpointError naming the file."""
    ckpt, _ = read_torch_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint or adapter file (no \"model\" state dict)", file=path)
    check_tensors(ckpt["model"], path)
    step = ckpt.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step must be a count of optimiser steps, got {step!r}", file=path, field="step")
    if not isinstance(ckpt.get("optimizer", {}), dict):
        raise CheckpointError(f"{path}: optimizer must be an optimiser state dict", file=path, field="optimizer")
    return ckpt


def restore_parameters(module: nn.Module, state: dict[str, torch.Tensor], *, prefix: str = "") -> list[str]:
    """Copy `state` into the same-named parameters/buffers of `module` (names relative to it, plus
    `prefix`); returns the names restored. A name the module lacks, or a shape mismatch, is an error."""
    own = module.state_dict(keep_vars=True)  # the names checkpoints use (official keys for ImageBindLLM)
    unknown = sorted(k for k in state if prefix + k not in own)
    if unknown:
        raise KeyError(f"checkpoint keys not in the model: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    with torch.no_grad():
        for k, v in state.items():
            target = own[prefix + k]
            if target.shape != v.shape:
                raise ValueError(f"{k}: checkpoint shape {list(v.shape)} != model shape {list(target.shape)}")
            target.copy_(v)
    return sorted(state)


# -------------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------------


def train(module: nn.Module, dataset: Dataset, cfg: TrainConfig, *,
          state_fn: Callable[[], dict[str, torch.Tensor]],
          restore_fn: Callable[[dict[str, torch.Tensor]], object] | None = None,
          collate_fn: Callable | None = None, name: str = "train") -> TrainResult:
    """Run `cfg.steps` optimiser steps of `module(batch) -> loss` over `dataset`.

    `module` is moved to the process's device and wrapped in DDP when torchrun started several
    processes. `state_fn()` gives the tensors to checkpoint; `restore_fn(state)` puts them back on
    resume (default: by name into `module`).
    """
    rank, world, device = init_distributed()
    torch.manual_seed(cfg.seed + rank)
    module.to(device)
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{name}: no trainable parameters")
    logger.info("%s: %d trainable tensors, %d elements, world size %d, device %s", name, len(trainable),
                sum(p.numel() for p in trainable), world, device)
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)

    start = 0
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        start = ckpt.get("step", 0)
        if start > cfg.steps:  # resuming would first skip start * accum_iter batches, for nothing
            raise CheckpointError(f"{cfg.resume}: saved at step {start}, beyond steps={cfg.steps}", file=cfg.resume,
                                  field="step")
        (restore_fn or (lambda s: restore_parameters(module, s)))(ckpt["model"])
        if "optimizer" in ckpt:
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
                raise CheckpointError(f"{cfg.resume}: its optimizer state does not fit this model ({e})",
                                      file=cfg.resume, field="optimizer") from e
        logger.info("%s: resumed from %s at step %d", name, cfg.resume, start)

    ddp = world > 1
    model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp else module
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if ddp \
        else RandomSampler(dataset, generator=generator)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_fn, drop_last=len(dataset) >= cfg.batch_size * world)
    batches = _infinite(loader, sampler)
    for _ in range(start * cfg.accum_iter):  # same data order after a resume
        next(batches)

    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    out_dir = Path(cfg.output_dir)
    log_file = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(out_dir / "log.jsonl", "a", encoding="utf-8")
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=name, dynamic_ncols=True)

    result = TrainResult(step=start)
    t0 = time.perf_counter()
    module.train()
    try:
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total = 0.0
            for micro in range(cfg.accum_iter):
                batch = _to_device(next(batches), device)
                sync = nullcontext() if (not ddp or micro == cfg.accum_iter - 1) else model.no_sync()
                with sync:
                    with torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext():
                        loss = model(batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}")
                    scaler.scale(loss / cfg.accum_iter).backward()
                total += loss.item() / cfg.accum_iter
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ddp:  # report the mean loss over ranks
                t = torch.tensor([total], device=device)
                dist.all_reduce(t)
                total = t.item() / world
            result.losses.append(total)
            result.step = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}")
            if log_file is not None and (result.step % cfg.log_every == 0 or result.step == cfg.steps):
                recent = result.losses[-cfg.log_every:]
                log_file.write(json.dumps({"stage": name, "step": result.step, "loss": sum(recent) / len(recent),
                                           "lr": lr, "seconds": round(time.perf_counter() - t0, 2)}) + "\n")
                log_file.flush()
            if rank == 0 and cfg.save_every and result.step % cfg.save_every == 0 and result.step < cfg.steps:
                save_checkpoint(out_dir / f"checkpoint-{result.step}.pth", state_fn(), optimizer, result.step, cfg)
        if rank == 0:
            result.checkpoint = str(save_checkpoint(out_dir / "checkpoint-last.pth", state_fn(), optimizer,
                                                    result.step, cfg))
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    module.eval()
    result.seconds = time.perf_counter() - t0
    if ddp:
        dist.barrier()
    return result
