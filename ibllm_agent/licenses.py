"""The licences of the official weights: what `ibllm download` prints before downloading, and what the app
shows when official weights load. Read from the upstream repositories (commits below); not legal advice.

Every file ImageBind-LLM needs is for non-commercial research use:

* LLaMA-1 (Meta's `consolidated.00.pth`, obtained from Meta by request): "Non-commercial bespoke license"
  (facebookresearch/llama MODEL_CARD.md at 1076b9c, 2023-02-24; the code there was GPL-3.0).
* ImageBind (`imagebind_huge.pth`): "ImageBind code and model weights are released under the CC-BY-NC 4.0
  license" (facebookresearch/ImageBind README.md at 53680b0); its LICENSE file and model card give
  CC BY-NC-SA 4.0 (Attribution-NonCommercial-ShareAlike), the stricter reading.
* Point-Bind (`imagebind_w3D.pth`, ZiyuG/ImageBind_w3D): ImageBind-huge's weights plus a 3D encoder; the
  repository's code is MIT (ZiyuGuo99/Point-Bind_Point-LLM LICENSE at 7a0448b) and no separate licence is
  given for the weights, so ImageBind's CC BY-NC(-SA) 4.0 terms carry over.
* The ImageBind-LLM adapter (`7B.pth`, `7B-pretrained.pth`, Cxxs/ImageBind-LLM): the model page says
  "License: other"; the training code is GPL-3.0 (OpenGVLab/LLaMA-Adapter LICENSE at 521a09d) and the
  weights are a fine-tune of LLaMA-1 with ImageBind, so both of their non-commercial terms apply.
* The visual cache (`knn.index`, csuhan/knn): ImageBind image features, under ImageBind's terms.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LICENSES", "WeightLicense", "license_notice", "model_license_notice"]


@dataclass(frozen=True)
class WeightLicense:
    name: str
    """What the licence is called upstream."""
    terms: str
    """One line: what it allows."""
    source: str
    """Where it is stated (repository, file, commit)."""


LLAMA = WeightLicense(
    "LLaMA-1 non-commercial bespoke license (Meta)",
    "research use only, weights obtained from Meta by request; no commercial use",
    "github.com/facebookresearch/llama MODEL_CARD.md @ 1076b9c")
IMAGEBIND = WeightLicense(
    "CC BY-NC-SA 4.0 (README: CC-BY-NC 4.0)",
    "non-commercial use with attribution; adaptations shared alike",
    "github.com/facebookresearch/ImageBind LICENSE, README.md, model_card.md @ 53680b0")
POINT_BIND = WeightLicense(
    "ImageBind's CC BY-NC-SA 4.0 (Point-Bind's code: MIT)",
    "ImageBind-huge's weights with a 3D encoder: ImageBind's non-commercial terms carry over",
    "github.com/ZiyuGuo99/Point-Bind_Point-LLM LICENSE @ 7a0448b")
ADAPTER = WeightLicense(
    "ImageBind-LLM adapter: 'other' (code GPL-3.0)",
    "a fine-tune of LLaMA-1 with ImageBind: non-commercial research use, as both",
    "huggingface.co/Cxxs/ImageBind-LLM; github.com/OpenGVLab/LLaMA-Adapter LICENSE @ 521a09d")

LICENSES: dict[str, tuple[WeightLicense, ...]] = {
    "7B": (ADAPTER, LLAMA),
    "7B-pretrained": (ADAPTER, LLAMA),
    "imagebind_w3D": (POINT_BIND, IMAGEBIND),
    "imagebind_huge": (IMAGEBIND,),
    "knn.index": (IMAGEBIND,),
    "llama": (LLAMA,),
}
"""Per registry file (and "llama" for Meta's files): the licences that govern it."""


def license_notice(name: str) -> str:
    """The lines `ibllm download NAME` prints before it downloads."""
    lines = [f"{name}: licensed for non-commercial research use only (not legal advice; read the terms):"]
    for lic in LICENSES.get(name, ()):
        lines.append(f"  - {lic.name}: {lic.terms} [{lic.source}]")
    if name in ("7B", "7B-pretrained"):
        lines.append(f"  It also needs Meta's LLaMA-1 7B weights: {LLAMA.name} [{LLAMA.source}]")
    return "\n".join(lines)


def model_license_notice() -> str:
    """What the app shows when official weights are loaded (Markdown)."""
    rows = [("LLaMA-1 7B", LLAMA), ("ImageBind-LLM adapter", ADAPTER), ("ImageBind / Point-Bind", IMAGEBIND)]
    return ("**Licences.** These weights are for non-commercial research use: "
            + "; ".join(f"{what}: {lic.name}" for what, lic in rows)
            + ". See the README section *Licences of the weights*.")
