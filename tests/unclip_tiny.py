"""A Stable unCLIP image-variation pipeline of the official layout with small random weights, built
locally (no download): diffusers' `StableUnCLIPImg2ImgPipeline` over a tiny UNet, VAE, CLIP text and
vision encoders and a CLIP BPE tokenizer of single bytes. Its image embeddings are `feature_dim` wide
(ImageBind's 1024), as in stabilityai/stable-diffusion-2-1-unclip.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _byte_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's byte-level alphabet, each symbol alone and word-final, plus the two specials; a few merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tiny_unclip(feature_dim: int = 1024, seed: int = 0):
    """The pipeline object (float32, CPU, eval)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    vocab, merges = _byte_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    hidden = 32
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        hidden_size=hidden, projection_dim=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(vocab), max_position_embeddings=77))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, projection_dim=feature_dim, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=4))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * feature_dim,
        cross_attention_dim=hidden, layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64),
                        latent_channels=4, norm_num_groups=32, sample_size=16)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}), image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=feature_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer,
        text_encoder=text_encoder, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_tiny_unclip(folder: Path, feature_dim: int = 1024) -> Path:
    """The tiny pipeline saved in the diffusers folder layout (`save_pretrained`), as a user's download is."""
    build_tiny_unclip(feature_dim).save_pretrained(str(folder))
    return folder
