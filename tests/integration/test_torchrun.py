"""DDP under torchrun on CPU (gloo): two processes train a few steps and end with the same weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ibllm_agent.factory import build_tiny, save_official

SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from ibllm_agent.train.adapter import adapter_state_dict, build_for_training, run_phase
    from ibllm_agent.train.datasets import FinetuneDataset
    from ibllm_agent.train.engine import TrainConfig

    llama_dir, imagebind, data, out = sys.argv[1:5]
    model = build_for_training(llama_dir, "tiny", imagebind, "finetune", seed=0)
    dataset = FinetuneDataset([data], model.tokenizer, max_words=96)
    cfg = TrainConfig(output_dir=out, steps=3, batch_size=2, accum_iter=2, lr=1e-2, warmup_steps=1,
                      progress=False, log_every=1)
    result = run_phase(model, dataset, "finetune", cfg)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"weights": adapter_state_dict(model), "losses": result.losses}, f"{out}/rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_agree_on_the_weights(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    files = save_official(build_tiny(phase="finetune"), tmp_path / "model", "tiny")
    records = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}"} for w in
               ("dog", "bell", "drum", "rain", "car", "bird", "cat", "sea")]
    (tmp_path / "data.json").write_text(json.dumps(records))
    (tmp_path / "train.py").write_text(SCRIPT)
    out = tmp_path / "out"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [torchrun, "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(tmp_path / "train.py"), str(files["llama_dir"]),
         str(files["imagebind"]), str(tmp_path / "data.json"), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["losses"] == r1["losses"]  # the logged loss is the mean over ranks
    start = build_tiny(phase="finetune")  # same seed: where training started
    moved = 0
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k
        moved += not torch.equal(v, start.state_dict()[k]) if k in start.state_dict() else 0
    assert moved > 0
    assert (out / "checkpoint-last.pth").exists()  # written by rank 0 only
    assert not (out / "log.jsonl").read_text().count("\n") > 3
