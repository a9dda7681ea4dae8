"""`ibllm quantize` files: written once, loaded as they are (no float copy), checked before use; and the
CLI's --quantize, doctor's auto line and download's licence notice."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import ibllm_agent
from ibllm_agent import cli
from ibllm_agent.checkpoint import CheckpointError
from ibllm_agent.factory import save_official, save_quantized
from ibllm_agent.llama.quant import QuantLinear
from ibllm_agent.placement import PlacementError


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return save_official(ibllm_agent.load("tiny"), tmp_path_factory.mktemp("official"), llama_type="tiny")


def load_official(official, llama_dir=None, llama_type="tiny", **options):
    return ibllm_agent.load(str(official["adapter"]), str(llama_dir or official["llama_dir"]), llama_type,
                            imagebind_ckpt=str(official["imagebind"]), dtype="float32", **options)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_file_loads_as_stored_and_answers_like_quantising_while_loading(official, tmp_path, scheme):
    written = save_quantized(official["llama_dir"], tmp_path, "tiny", quantize=scheme, dtype=torch.float32)
    sd = load_file(written["llama"])
    assert "layers.0.attention.wq.qweight" in sd and "layers.0.attention.wq.weight" not in sd
    assert not any("lora" in k or k.endswith(".bias") for k in sd)  # adapter-free: LoRA stays apart
    from_file = load_official(official, tmp_path)
    at_load = load_official(official, quantize=scheme)
    assert from_file.card.quantize == at_load.card.quantize == scheme
    assert isinstance(from_file.llama.layers[0].attention.wqkv, QuantLinear)
    assert from_file.llama.layers[0].attention.w_lora  # the quantised base keeps LoRA in float beside it
    prompt = ibllm_agent.format_prompt("Describe the dog.")
    feature = torch.randn(from_file.feature_dim, generator=torch.Generator().manual_seed(0))
    a = from_file.generate_batch([prompt], feature, max_tokens=8, temperature=0.0)[0]
    b = at_load.generate_batch([prompt], feature, max_tokens=8, temperature=0.0)[0]
    assert a.token_ids == b.token_ids
    with pytest.raises(PlacementError, match="already quantised to " + scheme):
        load_official(official, tmp_path, quantize="int8" if scheme == "int4" else "int4")


def test_quantised_file_whose_groups_do_not_match_is_refused(official, tmp_path):
    written = save_quantized(official["llama_dir"], tmp_path, "tiny", quantize="int4")
    sd = load_file(written["llama"])
    key = "layers.1.feed_forward.w2.scales_and_zeros"
    sd[key] = sd[key][:-1].contiguous()  # one group short
    save_file(sd, written["llama"])
    with pytest.raises(CheckpointError, match="scales_and_zeros.*groups or scales do not match") as e:
        load_official(official, tmp_path)
    assert e.value.field == key
    sd = load_file(written["llama"])
    sd["layers.0.attention.wq.qweight"] = torch.zeros(64, 64, dtype=torch.int8)  # int8 among int4
    sd["layers.0.attention.wq.scales"] = torch.ones(64, dtype=torch.bfloat16)
    del sd[key]
    save_file(sd, written["llama"])
    with pytest.raises(CheckpointError, match="int8 and int4|scales_and_zeros"):
        load_official(official, tmp_path)


def test_quantize_command_and_the_options_of_ask(official, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli.main(["quantize", str(official["llama_dir"]), str(out), "--llama-type", "tiny", "--quantize", "int8",
                     "--adapter", str(official["adapter"]), "--imagebind", str(official["imagebind"])]) == 0
    assert (out / "tiny" / "consolidated.00.safetensors").is_file() and (out / "adapter.safetensors").is_file()
    assert "use it with: ibllm ask" in capsys.readouterr().err
    assert cli.main(["ask", "What is this?", "--model", str(out / "adapter.safetensors"), "--llama-dir", str(out),
                     "--llama-type", "tiny", "--imagebind", str(out / "imagebind.safetensors"), "--max-tokens", "3",
                     "--temperature", "0"]) == 0
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ask", "x", "--quantize", "int3"])  # argparse names the choices
    assert cli.main(["ask", "hi", "--model", "tiny", "--quantize", "int4", "--max-tokens", "2"]) == 0


def test_doctor_says_what_auto_picks_and_download_prints_the_licences(capsys, monkeypatch, tmp_path):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "auto for official weights: device " in out and "the toy model: device cpu, dtype float32" in out
    from ibllm_agent import pretrained

    monkeypatch.setattr(pretrained, "download", lambda *a, **k: tmp_path / "7B.pth")
    assert cli.main(["download", "7B", "--dest", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "non-commercial" in err and "LLaMA-1" in err and "Cxxs/ImageBind-LLM" in err


def test_a_model_converted_for_inference_is_not_saved_in_the_official_layout(tmp_path):
    with pytest.raises(ValueError, match="quantised or fused"):
        save_official(ibllm_agent.load("tiny", fuse=True), tmp_path)
    with pytest.raises(ValueError, match="quantised or fused"):
        save_official(ibllm_agent.load("tiny", quantize="int8"), tmp_path)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_quantised_model_holds_its_bind_network_in_int8(official, scheme):
    """The bind network's SwiGLU linears (604M weights on the 7B) are quantised with LLaMA, always in int8;
    its projection stays float. Its output stays close to the float network's."""
    float_model = load_official(official)
    model = load_official(official, quantize=scheme)
    for block in model.bind.blocks:
        for name in ("w1", "w2", "w3"):
            layer = getattr(block, name)
            assert isinstance(layer, QuantLinear) and layer.quantize == "int8", (name, layer)
    assert isinstance(model.bind.proj, torch.nn.Linear)
    feature = torch.randn(3, model.feature_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = model.bind(feature), float_model.bind(feature)
    assert torch.allclose(got, want, rtol=0, atol=0.02 * want.abs().max().item())
    tiny = ibllm_agent.load("tiny", quantize=scheme)
    assert isinstance(tiny.bind.blocks[0].w1, QuantLinear)


def test_imagebind_encoders_are_converted_on_first_use_with_the_eager_answers(official):
    """From float32 files into bfloat16: vision is converted at load (every question uses it), the other
    encoders stay in the file, unread, until they encode; then they give what converting everything at
    once gives, also when two threads ask at the same moment."""
    import threading

    from ibllm_agent.imagebind import tokenize

    model = ibllm_agent.load(str(official["adapter"]), str(official["llama_dir"]), "tiny",
                             imagebind_ckpt=str(official["imagebind"]), dtype="bfloat16")
    ib = model.image_bind
    assert {p.dtype for m in ib.branch("vision") for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in ib.branch("text") for p in m.parameters()} == {torch.float32}
    eager = ibllm_agent.load(str(official["adapter"]), str(official["llama_dir"]), "tiny",
                             imagebind_ckpt=str(official["imagebind"]), dtype="float32")
    eager.image_bind.to(torch.bfloat16)
    tokens = tokenize(["a dog", "a cat"])
    results, errors = [], []

    def encode():
        try:
            with torch.inference_mode():
                results.append(ib({"text": tokens})["text"])
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=encode) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with torch.inference_mode():
        want = eager.image_bind({"text": tokens})["text"]
    for got in results:
        assert torch.equal(got, want)
    assert {p.dtype for m in ib.branch("text") for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in ib.branch("audio") for p in m.parameters()} == {torch.float32}
    assert all(not p.is_inference() for m in ib.branch("text") for p in m.parameters())
