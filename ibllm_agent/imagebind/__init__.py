"""ImageBind encoders (vision, text, audio, depth, thermal, IMU) and Point-Bind's 3D encoder.

Our own implementation with the official state-dict keys; see ``model.py`` for the semantics.
"""

from .bpe import SimpleTokenizer, tokenize
from .model import (
    MODALITIES,
    ImageBindArgs,
    ImageBindModel,
    ModalityType,
    imagebind_huge_args,
    imagebind_tiny_args,
    read_imagebind_config,
)

__all__ = [
    "MODALITIES",
    "ImageBindArgs",
    "ImageBindModel",
    "ModalityType",
    "SimpleTokenizer",
    "imagebind_huge_args",
    "imagebind_tiny_args",
    "read_imagebind_config",
    "tokenize",
]
