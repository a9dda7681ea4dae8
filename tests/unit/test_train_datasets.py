"""Training data: upstream tokenisation (labels, padding, truncation) and the official file formats."""

from __future__ import annotations

import json

import pytest
import torch

from ibllm_agent.generation import format_prompt
from ibllm_agent.presets import tiny_tokenizer
from ibllm_agent.toy import ToyWorld
from ibllm_agent.train.datasets import (
    PRETRAIN_INSTRUCTION,
    FinetuneDataset,
    PretrainDataset,
    encode_example,
    read_caption_table,
    read_instruction_json,
    trim_padding,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_encode_example_masks_the_prompt_and_pads_like_upstream(tok):
    prompt, answer = format_prompt("What is this?"), "a dog"
    ex = encode_example(tok, prompt, answer, max_words=200)
    prompt_ids = tok.encode(prompt, bos=True, eos=False)
    full = tok.encode(prompt + answer, bos=True, eos=True)
    n = len(full)
    assert ex.tokens[:n].tolist() == full and (ex.tokens[n:] == 0).all()
    assert (ex.labels[: len(prompt_ids)] == 0).all()  # the prompt is not learned
    assert ex.labels[len(prompt_ids):n].tolist() == full[len(prompt_ids):]  # the answer and EOS are
    assert (ex.labels[n:] == 0).all()
    assert n < 200 and ex.mask.tolist() == [1.0] * n + [0.0] * (200 - n)


def test_encode_example_truncates_to_max_words(tok):
    ex = encode_example(tok, format_prompt("Describe it."), "dog " * 200, max_words=40)
    assert ex.tokens.shape == (40,) and (ex.tokens != 0).all() and ex.mask.sum() == 40
    assert ex.tokens[-1] != tok.eos_id  # cut, as upstream: no EOS at the end


def test_trim_padding_keeps_every_real_column():
    tokens = torch.tensor([[1, 5, 6, 0, 0, 0], [1, 7, 0, 0, 0, 0]])
    labels = torch.tensor([[0, 0, 6, 0, 0, 0], [0, 7, 0, 0, 0, 0]])
    t, lab = trim_padding(tokens, labels)
    assert t.tolist() == [[1, 5, 6], [1, 7, 0]] and lab.tolist() == [[0, 0, 6], [0, 7, 0]]


def test_caption_tables_csv_and_tsv(tmp_path):
    (tmp_path / "a.tsv").write_text("url\tcaption\nimg/1.png\ta red ball\n/abs/2.png\ta dog, running\n")
    (tmp_path / "b.csv").write_text('url,caption\n3.png,"a bell, ringing"\n')
    rows = read_caption_table(tmp_path / "a.tsv")
    assert rows == [{"url": str(tmp_path / "img/1.png"), "caption": "a red ball"},
                    {"url": "/abs/2.png", "caption": "a dog, running"}]
    assert read_caption_table(tmp_path / "b.csv")[0]["caption"] == "a bell, ringing"
    (tmp_path / "bad.csv").write_text("path,text\nx,y\n")
    with pytest.raises(ValueError, match="missing column"):
        read_caption_table(tmp_path / "bad.csv")


def test_instruction_json_validation(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"},
                                {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                     {"from": "gpt", "value": "a"}]}]))
    records = read_instruction_json(path)
    assert records[1]["image"] == str(tmp_path / "x.png")
    path.write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(ValueError, match="neither Alpaca"):
        read_instruction_json(path)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    w = ToyWorld(0)
    return [w.write(name, "image", 0, folder).path for name in ("dog", "bell")]


def test_pretrain_dataset_reads_images_through_the_loader(tmp_path, tok, image_files):
    meta = tmp_path / "meta.tsv"
    meta.write_text("url\tcaption\n" + "".join(f"{p}\ta picture of a {n}\n" for p, n in zip(image_files, ["dog", "bell"])))
    ds = PretrainDataset([meta], tok, max_words=256)
    item = ds[0]
    assert item["image"].shape == (3, 224, 224) and item["tokens"].shape == (256,)
    prompt_len = len(tok.encode(format_prompt(PRETRAIN_INSTRUCTION), bos=True, eos=False))
    assert (item["labels"][:prompt_len] == 0).all() and (item["labels"][prompt_len:] != 0).any()
    feats = {image_files[0]: torch.ones(8), image_files[1]: torch.zeros(8)}
    assert PretrainDataset([meta], tok, features=feats)[1]["feature"].sum() == 0


def test_finetune_dataset_mixes_llava_and_alpaca(tmp_path, tok, image_files):
    path = tmp_path / "ft.json"
    path.write_text(json.dumps([
        {"image": image_files[0], "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                                    {"from": "gpt", "value": "a dog"}]},
        {"instruction": "Describe the sound.", "input": "a bell", "output": "loud"},
        {"image": image_files[0], "input": "Answer in JSON: {\"name\": string}", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "{\"name\": \"dog\"}"}]},
    ]))
    ds = FinetuneDataset([path], tok, max_words=256)
    llava, alpaca = ds[0], ds[1]
    assert llava["image"].abs().sum() > 0
    assert (alpaca["image"] == 0).all() and alpaca["image"].shape == (3, 224, 224)  # the zero image
    prompt = format_prompt("Describe the sound.", "a bell")  # the input template when input is given
    n = len(tok.encode(prompt, bos=True, eos=False))
    assert alpaca["tokens"][:n].tolist() == tok.encode(prompt, bos=True, eos=False)
    q = tok.encode(format_prompt("What is this?"), bos=True, eos=False)  # <image> tag removed
    assert llava["tokens"][: len(q)].tolist() == q
    with_input = tok.encode(format_prompt("What is this?", 'Answer in JSON: {"name": string}'), bos=True, eos=False)
    assert ds[2]["tokens"][: len(with_input)].tolist() == with_input  # a LLaVA record's input fills the template
