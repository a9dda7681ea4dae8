"""Every training stage on a tiny config: the loss goes down, checkpoints round-trip and resume, and
the adapter files load through `ibllm_agent.load` like the official ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import ibllm_agent
from ibllm_agent.factory import build_tiny, save_official
from ibllm_agent.imagebind.model import ImageBindModel, imagebind_tiny_args
from ibllm_agent.train.adapter import (
    AdapterObjective,
    adapter_state_dict,
    build_for_training,
    is_adapter_key,
    run_phase,
    save_adapter,
    set_trainable,
)
from ibllm_agent.train.bind_encoders import (
    ConceptPairs,
    PairedContrastive,
    ToImageContrastive,
    embed_all,
    masked_info_nce,
    random_rotation,
)
from ibllm_agent.train.datasets import FinetuneDataset
from ibllm_agent.train.engine import TrainConfig, atomic_path, load_checkpoint, lr_at, train
from ibllm_agent.train.language_model import (
    LanguageModelObjective,
    TextDataset,
    pretrain_language_model,
    save_llama,
    train_tokenizer,
)
from ibllm_agent.train.toy_data import group_clouds


def cfg(tmp_path, name, steps, **kw):
    kw = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "progress": False, "log_every": 1, **kw}
    return TrainConfig(output_dir=str(tmp_path / name), steps=steps, **kw)


def test_warmup_then_cosine():
    c = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(55, c) == pytest.approx(0.55)
    assert lr_at(100, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 100))


def test_masked_info_nce_ignores_same_concept_negatives():
    a = F.normalize(torch.randn(6, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # b[1] equals a[0]: a same-concept "negative" that must not count against row 0
    b = a.clone()
    b[1] = a[0]
    loss_masked = masked_info_nce(a, b, labels, 10.0)
    loss_unique = masked_info_nce(a, b, torch.arange(6), 10.0)
    assert loss_masked < loss_unique


def test_language_model_loss_goes_down_and_saves_meta_layout(tmp_path):
    lines = [f"the {a} is {b}." for a in ("dog", "bell", "drum", "car") for b in ("loud", "red", "small")]
    tok_path = train_tokenizer(lines * 4, tmp_path / "llama" / "tokenizer.model", vocab_size=300)
    from ibllm_agent.llama.tokenizer import Tokenizer

    tok = Tokenizer(tok_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
    params = {"dim": 32, "n_layers": 2, "n_heads": 2, "multiple_of": 16, "norm_eps": 1e-6, "vocab_size": -1}
    llama, result = pretrain_language_model(lines, tok, params, cfg(tmp_path, "lm", 30, batch_size=8), max_words=24)
    assert sum(result.losses[-5:]) / 5 < 0.6 * sum(result.losses[:5]) / 5
    out = save_llama(llama, params, tmp_path / "llama", "toy")
    assert json.loads((out / "params.json").read_text()) == params
    base = torch.load(out / "consolidated.00.pth", weights_only=True)
    assert "tok_embeddings.weight" in base and "layers.0.attention.wq.weight" in base and "output.weight" in base
    assert not any("lora" in k or "gate" in k or k.endswith(".bias") for k in base)
    batch = {"tokens": torch.stack([TextDataset(lines[:2], tok, 24)[i]["tokens"] for i in range(2)])}
    assert math.isfinite(LanguageModelObjective(llama)(batch).item())


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
    """A tiny model written in the official layout (LLaMA files, adapter, ImageBind)."""
    out = tmp_path_factory.mktemp("official")
    return save_official(build_tiny(phase="finetune"), out, "tiny")


def _instruction_data(tmp_path, tok_words=("dog", "bell", "drum", "rain")):
    records = [{"instruction": f"Name a {w}.", "input": "", "output": f"a {w}"} for w in tok_words]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records * 2))
    return path


def test_pretrain_then_finetune_reduce_the_loss_and_load_like_official_files(tmp_path, official_tiny):
    files = official_tiny
    feats = {"": torch.zeros(1024)}
    # pretrain: bind network, gates and prefix only; visual features differ per sample
    model = build_for_training(files["llama_dir"], "tiny", files["imagebind"], "pretrain", seed=1)
    assert not any("lora" in k for k in model.state_dict())
    tok = model.tokenizer
    records = [{"image": f"img{i}.png", "conversations": [{"from": "human", "value": "What is this?"},
                                                         {"from": "gpt", "value": w}]}
               for i, w in enumerate(["a dog", "a bell", "a drum", "rain"])]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    feats.update({str(tmp_path / f"img{i}.png"): F.normalize(torch.randn(1024), dim=0) for i in range(4)})
    data = FinetuneDataset([tmp_path / "llava.json"], tok, max_words=128, features=feats)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_phase(model, data, "pretrain", cfg(tmp_path, "pre", 25, lr=3e-2))
    assert result.losses[-1] < 0.85 * result.losses[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("image_bind_", "prefix_query")) or k.endswith(".gate") for k in changed)
    pre = save_adapter(model, tmp_path / "pre.pth")

    # finetune from the pretrain adapter: norms, biases and LoRA only
    model = build_for_training(files["llama_dir"], "tiny", files["imagebind"], "finetune", adapter=pre, seed=1)
    assert torch.equal(model.prefix_query.weight, torch.load(pre, weights_only=True)["model"]["prefix_query.weight"])
    data = FinetuneDataset([_instruction_data(tmp_path), tmp_path / "llava.json"], tok, max_words=128,
                           features=feats)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_phase(model, data, "finetune", cfg(tmp_path, "ft", 40, lr=3e-2))
    assert sum(result.losses[-3:]) < 0.6 * sum(result.losses[:3])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("llama.") and any(s in k for s in ("norm", "bias", "lora")) for k in changed)

    # the checkpoint is an official adapter file: ibllm_agent.load reads it with the same LLaMA/ImageBind
    ckpt = load_checkpoint(result.checkpoint)
    assert set(ckpt["model"]) == {k for k in model.state_dict() if is_adapter_key(k)}
    assert ckpt["step"] == 40 and "optimizer" in ckpt
    save_adapter(model, tmp_path / "final.pth")
    loaded = ibllm_agent.load(str(tmp_path / "final.pth"), llama_dir=files["llama_dir"], llama_type="tiny",
                              imagebind_ckpt=files["imagebind"], dtype="float32")
    for k, v in adapter_state_dict(model).items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # and computes exactly what the trained model computes
    tokens = data[0]["tokens"][None, :40]
    feature = feats[str(tmp_path / "img1.png")][None]
    model.eval()
    with torch.no_grad():
        expected = model(tokens, model.bind(feature))
        got = loaded(tokens, loaded.bind(feature))
    assert torch.allclose(got, expected, atol=1e-5)


def test_resume_continues_where_the_checkpoint_stopped(tmp_path):
    model = build_tiny(phase="pretrain")
    feats = {"": F.normalize(torch.randn(1024), dim=0)}
    data = FinetuneDataset([_instruction_data(tmp_path)], model.tokenizer, max_words=128, features=feats)
    full = run_phase(model, data, "pretrain", cfg(tmp_path, "full", 6, save_every=3))
    ckpt3 = tmp_path / "full" / "checkpoint-3.pth"
    assert ckpt3.exists() and (tmp_path / "full" / "log.jsonl").read_text().count("\n") == 6

    resumed_model = build_tiny(phase="pretrain")
    resumed = run_phase(resumed_model, data, "pretrain", cfg(tmp_path, "resumed", 6, resume=str(ckpt3)))
    assert resumed.step == 6 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-4)
    for k, v in adapter_state_dict(model).items():
        assert torch.allclose(adapter_state_dict(resumed_model)[k], v, atol=1e-6), k


def test_adapter_objective_runs_images_through_frozen_imagebind():
    model = build_tiny(phase="pretrain")
    set_trainable(model, "pretrain")
    tokens = torch.randint(3, 50, (2, 10))
    batch = {"tokens": tokens, "labels": tokens, "image": torch.randn(2, 3, 224, 224)}
    loss = AdapterObjective(model).train()(batch)
    loss.backward()
    assert all(p.grad is None for p in model.image_bind.parameters())
    assert model.bind.proj.weight.grad is not None


@pytest.fixture(scope="module")
def tiny_media():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)  # 4 concepts x 3 samples
    images = torch.randn(4, 3, 224, 224)[labels] + 0.3 * torch.randn(12, 3, 224, 224)
    texts = torch.zeros(4, 77, dtype=torch.long)
    texts[:, 0], texts[:, 1], texts[:, 2] = 49406, torch.tensor([320, 1929, 3326, 2368]), 49407
    audio = torch.randn(4, 1, 1, 128, 204)[labels] + 0.3 * torch.randn(12, 3, 1, 128, 204)
    # shapes that differ under any rotation: a ball, a rod, a disk, a thin shell
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.05, 0.05], [1.0, 1.0, 0.05], [0.3, 0.3, 0.3]])
    clouds = torch.randn(12, 1024, 3) * scales[labels][:, None]
    clouds[labels == 3] = F.normalize(clouds[labels == 3], dim=-1)
    return {"labels": labels, "images": images, "texts": texts, "audio": audio, "clouds": clouds}


def _small_imagebind():
    from dataclasses import replace

    return ImageBindModel(replace(imagebind_tiny_args(), point_num_group=16, point_group_size=8, audio_drop_path=0.0,
                                  point_drop_path=0.0))


@pytest.mark.slow
def test_binding_stages_reduce_their_losses(tmp_path, tiny_media):
    torch.manual_seed(0)
    ib = _small_imagebind()
    m = tiny_media
    pairs = ConceptPairs(m["images"], m["labels"], m["texts"], torch.arange(4), keys=("a", "b"))
    r = train(PairedContrastive(ib, "vision", "text"), pairs, cfg(tmp_path, "vt", 20, batch_size=12, lr=3e-3),
              state_fn=ib.state_dict)
    assert sum(r.losses[-3:]) < 0.7 * sum(r.losses[:3])
    image_emb = embed_all(ib, "vision", m["images"])

    frozen_vision = {k: v.clone() for k, v in ib.state_dict().items() if ".vision." in k}
    sounds = ConceptPairs(m["audio"], m["labels"], image_emb, m["labels"], random_clip=True)
    r = train(ToImageContrastive(ib, "audio"), sounds, cfg(tmp_path, "au", 20, batch_size=12, lr=3e-3),
              state_fn=ib.state_dict)
    assert sum(r.losses[-3:]) < 0.7 * sum(r.losses[:3])

    grouped = group_clouds(m["clouds"], ib.args.point_num_group, ib.args.point_group_size)
    clouds = ConceptPairs(grouped, m["labels"], image_emb, m["labels"], augment=random_rotation)
    r = train(ToImageContrastive(ib, "point"), clouds, cfg(tmp_path, "pt", 30, batch_size=12, lr=3e-3),
              state_fn=ib.state_dict)
    assert sum(r.losses[-5:]) < 0.8 * sum(r.losses[:5])
    assert all(torch.equal(v, ib.state_dict()[k]) for k, v in frozen_vision.items())
    # pre-grouped embedding equals the model's own point path
    ib.eval()
    direct = F.normalize(ib.encode("point", m["clouds"][:2]), dim=-1)
    assert torch.allclose(embed_all(ib, "point", {k: v[:2] for k, v in grouped.items()}), direct, atol=1e-5)
    # a rotated group set is the grouping of the rotated cloud
    torch.manual_seed(1)
    rotated = random_rotation({k: v[:1] for k, v in grouped.items()})
    torch.manual_seed(1)
    q = random_rotation({"x": torch.eye(3)})["x"].T  # the same rotation, as a matrix
    regrouped = group_clouds(m["clouds"][:1] @ q.T, ib.args.point_num_group, ib.args.point_group_size)
    assert torch.allclose(rotated["centres"], regrouped["centres"], atol=1e-5)


def test_random_heading_turns_both_sensors_together_and_keeps_vertical():
    from ibllm_agent.train.bind_encoders import random_heading

    imu = torch.randn(6, 2000)
    torch.manual_seed(3)
    turned = random_heading(imu, max_shift=0)
    # a rotation about z: z untouched, horizontal norms kept, the same angle for accelerometer and gyroscope
    assert torch.equal(turned[2], imu[2]) and torch.equal(turned[5], imu[5])
    for x in (0, 3):
        torch.testing.assert_close(turned[x:x + 2].norm(dim=0), imu[x:x + 2].norm(dim=0))
    angle = [torch.atan2(turned[x + 1, 0], turned[x, 0]) - torch.atan2(imu[x + 1, 0], imu[x, 0]) for x in (0, 3)]
    assert torch.isclose(torch.remainder(angle[0] - angle[1], 2 * torch.pi), torch.tensor(0.0), atol=1e-4) or \
        torch.isclose(torch.remainder(angle[0] - angle[1], 2 * torch.pi), torch.tensor(2 * torch.pi), atol=1e-4)
    shifted = random_heading(imu, max_shift=50)
    assert shifted.shape == imu.shape


def test_atomic_path_leaves_a_memory_mapped_reader_the_old_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(1000)}, path)
    mapped = torch.load(path, weights_only=True, mmap=True)
    with atomic_path(path) as tmp:
        torch.save({"w": torch.full((5000,), 2.0)}, tmp)
    assert torch.equal(mapped["w"], torch.ones(1000))  # rewritten in place, this read garbage
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.full((5000,), 2.0))
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert torch.load(path, weights_only=True)["w"].shape == (5000,) and sorted(tmp_path.iterdir()) == [path]
