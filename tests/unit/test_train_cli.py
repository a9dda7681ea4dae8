"""`ibllm train pretrain|finetune` end to end on tiny official-layout files."""

from __future__ import annotations

import json

import pytest
import torch

from ibllm_agent.cli import main
from ibllm_agent.factory import build_tiny, save_official
from ibllm_agent.toy import ToyWorld


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return save_official(build_tiny(phase="finetune"), tmp_path_factory.mktemp("tiny"), "tiny")


def test_pretrain_then_finetune_from_the_command_line(tmp_path, files, capsys):
    world = ToyWorld(0)
    images = [world.write(n, "image", 0, tmp_path / "img").path for n in ("dog", "bell")]
    (tmp_path / "pairs.tsv").write_text("url\tcaption\n" + "".join(f"{p}\ta picture\n" for p in images))
    common = ["--llama-dir", str(files["llama_dir"]), "--llama-type", "tiny", "--imagebind-ckpt",
              str(files["imagebind"]), "--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--no-progress"]
    assert main(["train", "pretrain", *common, "--data", str(tmp_path / "pairs.tsv"),
                 "--output-dir", str(tmp_path / "pre")]) == 0
    pre = tmp_path / "pre" / "checkpoint-last.pth"
    keys = set(torch.load(pre, weights_only=True)["model"])
    assert "prefix_query.weight" in keys and not any("lora" in k for k in keys)

    (tmp_path / "cfg.json").write_text(json.dumps({"lr": 5e-3, "max_words": 128}))
    (tmp_path / "ft.json").write_text(json.dumps(
        [{"instruction": "Say hi.", "input": "", "output": "hi"},
         {"image": images[0], "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                                {"from": "gpt", "value": "a dog"}]}]))
    assert main(["train", "finetune", *common, "--config", str(tmp_path / "cfg.json"), "--init", str(pre),
                 "--data", str(tmp_path / "ft.json"), "--output-dir", str(tmp_path / "ft")]) == 0
    ckpt = torch.load(tmp_path / "ft" / "checkpoint-last.pth", weights_only=True)
    assert ckpt["config"]["lr"] == 5e-3 and any("lora" in k for k in ckpt["model"])
    assert "adapter:" in capsys.readouterr().out


def test_missing_required_option_is_a_clear_error(tmp_path, files, capsys):
    assert main(["train", "finetune", "--llama-dir", str(files["llama_dir"]), "--output-dir", str(tmp_path)]) == 2
    assert "--imagebind-ckpt is required" in capsys.readouterr().err
