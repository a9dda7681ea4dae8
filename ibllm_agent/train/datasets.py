"""The official training data formats, tokenised exactly as the upstream ImageBind-LLM datasets do.

* Pretraining: CSV/TSV meta files with `url` and `caption` columns (upstream reads tab-separated files
  with pandas; we sniff the delimiter), each row an image and its caption, trained with the fixed
  instruction "Generate caption of this image".
* Finetuning: Alpaca-style JSON (`instruction`, `input`, `output`) and LLaVA-style JSON (`image` plus
  `conversations`: the first human turn and the first answer), mixed in one list. A LLaVA record may also
  carry an `input` (our extension, e.g. "Answer in JSON: ..."), which fills the template's Input as for Alpaca.

Each sample becomes `(tokens, labels, mask, image)` as upstream: the prompt and the answer are
tokenised with BOS and EOS, padded with -1 or cut to `max_words`, the labels are the tokens with the
prompt part (and the padding) set to 0, which the loss ignores. Image-free samples get a zero image
tensor, as upstream, which the model passes through ImageBind like any image.

Datasets may also return a precomputed ImageBind feature instead of an image (`features=`): the
image encoder is frozen in both phases, so its outputs can be computed once and reused (the toy build
does this to stay within its time budget).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

PRETRAIN_INSTRUCTION = "Generate caption of this image"
"""The instruction upstream pairs with every caption in pretraining."""
IMAGE_SIZE = 224


@dataclass
class Example:
    """One tokenised training sample."""

    tokens: torch.Tensor
    """(max_words,) int64: BOS + prompt + answer + EOS, padding set to 0."""
    labels: torch.Tensor
    """(max_words,) int64: the answer tokens (and EOS); prompt and padding are 0 (ignored by the loss)."""
    mask: torch.Tensor
    """(max_words,) float: 1 where `tokens` are real."""


def encode_example(tokenizer, prompt: str, answer: str, max_words: int) -> Example:
    """Upstream tokenisation: pad with -1 / truncate to max_words, labels = tokens after the prompt."""
    prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
    full = torch.tensor(tokenizer.encode(prompt + answer, bos=True, eos=True), dtype=torch.int64)
    padding = max_words - full.shape[0]
    if padding > 0:
        full = torch.cat((full, torch.full((padding,), -1, dtype=torch.int64)))
    else:
        full = full[:max_words]
    labels = full.clone()
    labels[: len(prompt_ids)] = -1
    tokens_real, labels_real = full.ge(0), labels.ge(0)
    full[~tokens_real] = 0
    labels[~labels_real] = 0
    return Example(full, labels, tokens_real.float())


def trim_padding(tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row: with causal attention and ignored labels
    this changes no loss value, and short samples padded to `max_words` train much faster."""
    real = (tokens != 0).any(dim=0).nonzero()
    end = int(real.max()) + 1 if len(real) else 1
    return tokens[:, :end], labels[:, :end]


def read_caption_table(path: str | Path) -> list[dict[str, str]]:
    """Rows `{url, caption}` of a CSV or TSV meta file (header with at least `url` and `caption`)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        head = f.readline()
        f.seek(0)
        delimiter = "\t" if "\t" in head else ","
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = {"url", "caption"} - set(rows[0])
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found {sorted(rows[0])}")
    base = path.parent
    out = []
    for r in rows:
        url = r["url"].strip()
        if url and not Path(url).is_absolute():
            url = str(base / url)  # relative paths are relative to the meta file
        out.append({"url": url, "caption": r["caption"]})
    return out


def read_instruction_json(path: str | Path) -> list[dict]:
    """Alpaca and/or LLaVA records from a JSON list (relative image paths resolved against the file)."""
    path = Path(path)
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    for i, r in enumerate(records):
        if "image" in r:
            if "conversations" not in r or len(r["conversations"]) < 2:
                raise ValueError(f"{path}: record {i} has an image but no question/answer conversations")
            if not Path(r["image"]).is_absolute():
                r["image"] = str(path.parent / r["image"])
        elif not {"instruction", "output"} <= set(r):
            raise ValueError(f"{path}: record {i} is neither Alpaca (instruction/output) nor LLaVA (image/conversations)")
    return records


def load_image_tensor(path: str) -> torch.Tensor:
    """[3, 224, 224] through the project's media loader (the upstream eval transform)."""
    from ibllm_agent.media import load_media

    return load_media(path, "image").tensor


class _Base(Dataset):
    def __init__(self, tokenizer, max_words: int, features: dict[str, torch.Tensor] | None):
        self.tokenizer = tokenizer
        self.max_words = max_words
        self.features = features

    def _visual(self, image_path: str | None) -> dict[str, torch.Tensor]:
        """`{"image": [3,224,224]}` or, with precomputed features, `{"feature": [1024]}`. A missing
        image is the zero image (or the feature stored under the key "" for it)."""
        if self.features is not None:
            return {"feature": self.features[image_path or ""]}
        if image_path is None:
            return {"image": torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)}
        return {"image": load_image_tensor(image_path)}

    def _item(self, prompt: str, answer: str, image_path: str | None) -> dict[str, torch.Tensor]:
        ex = encode_example(self.tokenizer, prompt, answer, self.max_words)
        return {"tokens": ex.tokens, "labels": ex.labels, "mask": ex.mask, **self._visual(image_path)}


class PretrainDataset(_Base):
    """Image-caption pairs from CSV/TSV meta files (`url`, `caption`)."""

    def __init__(self, meta: Sequence[str | Path], tokenizer, max_words: int = 96,
                 features: dict[str, torch.Tensor] | None = None):
        super().__init__(tokenizer, max_words, features)
        self.rows = [row for m in meta for row in read_caption_table(m)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from ibllm_agent.generation import format_prompt

        row = self.rows[i]
        return self._item(format_prompt(PRETRAIN_INSTRUCTION, None), row["caption"], row["url"])


class FinetuneDataset(_Base):
    """Instruction data: Alpaca records (text only, zero image) and LLaVA records (image + first Q/A)."""

    def __init__(self, meta: Sequence[str | Path], tokenizer, max_words: int = 128,
                 features: dict[str, torch.Tensor] | None = None):
        super().__init__(tokenizer, max_words, features)
        self.records = [r for m in meta for r in read_instruction_json(m)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from ibllm_agent.generation import format_prompt

        r = self.records[i]
        if "image" in r:
            question = r["conversations"][0]["value"].replace("<image>", "").strip()
            return self._item(format_prompt(question, r.get("input") or None), r["conversations"][1]["value"],
                              r["image"])
        # upstream passes the instruction as a 1-tuple here (a trailing comma); we pass the string
        return self._item(format_prompt(r["instruction"], r.get("input") or None), r["output"], None)
