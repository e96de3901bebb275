"""Tiny random diffusers folders (real architectures, random weights) for tests and demos.

Nothing can be downloaded here, so the tokenizer is written from a hand-made character vocabulary: every
lower-case letter, digit and common punctuation mark is one token, which is enough to exercise the real
CLIPTokenizer and CLIPTextModel code paths offline.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BACKBONES = ("upscaler", "onestep")
TEXT_DIM = 32
# The x4 upscaler's VAE scaling factor: StableDiffusionUpscalePipeline resets any other value when built.
UPSCALER_SCALING_FACTOR = 0.08333


def write_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!?-'"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def upscaler_schedulers() -> dict[str, DDPMScheduler | DDIMScheduler]:
    """The x4 upscaler's two schedulers, as pipeline arguments: the LQ image's noise, and v-prediction
    DDIM sampling without clipping the predicted x0 to [-1, 1] (diffusers' default): latents are
    unit-variance, and the clipping washed a pretrained base's outputs out (17 dB PSNR, 22 without)."""
    return {
        "low_res_scheduler": DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear"),
        "scheduler": DDIMScheduler(
            num_train_timesteps=1000,
            beta_schedule="scaled_linear",
            prediction_type="v_prediction",
            clip_sample=False,
        ),
    }


def tiny_vae() -> AutoencoderKL:
    # Three blocks: a factor-4 autoencoder, like the SD x4 upscaler's (its latents are LQ-sized).
    return AutoencoderKL(
        block_out_channels=(16, 16, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_unet(in_channels: int, num_class_embeds: int | None) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    )


def make_tiny_model(folder: str | Path, backbone: str, seed: int = 0) -> Path:
    """Write a tiny random diffusers folder for `backbone` that its pipeline's from_pretrained loads."""
    from diffusers import StableDiffusionUpscalePipeline

    from trainer.pipeline_onestep import OneStepSRPipeline

    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(folder / "tokenizer")
    text_encoder = tiny_text_encoder(tokenizer)
    vae = tiny_vae()
    if backbone == "upscaler":
        max_noise_level = 350
        vae.register_to_config(scaling_factor=UPSCALER_SCALING_FACTOR)
        pipe = StableDiffusionUpscalePipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=tiny_unet(7, num_class_embeds=max_noise_level + 1),
            **upscaler_schedulers(),
            max_noise_level=max_noise_level,
        )
    else:
        pipe = OneStepSRPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=tiny_unet(4, num_class_embeds=None),
            scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear"),
            timestep=999,
        )
    pipe.save_pretrained(folder)
    return folder
