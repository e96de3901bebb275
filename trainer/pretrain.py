"""Pretraining a small SR base model from scratch, on (LQ, HQ) pairs, for when no pretrained weights can
be had (offline machines, tests, the loop benchmark).

The architecture is the SD x4 upscaler's (`StableDiffusionUpscalePipeline`, the `upscaler` backbone),
sized by `width` (1: trainer/tiny.py's sizes). It is the multi-step backbone on purpose: its candidates
differ by seed, guidance and steps, which is how the paper makes its N candidates, and its DSPO loss is
the paper's own (SPEC §3), not the one-step surrogate (SPEC §4).

Two stages, each a plain loop on random aligned crops of the pairs:
1. the VAE (factor 4: latents are LQ-sized) as an autoencoder of HQ crops, L1 plus a small KL term;
   its latents are then rescaled so that, times the x4 upscaler's fixed `scaling_factor` (0.08333),
   they have unit variance, as the diffusion expects (`fold_latent_scale` says why it is not the
   `scaling_factor` that changes);
2. the UNet, VAE frozen: v-prediction on the HQ latent, conditioned on the LQ crop noised to
   `noise_level` (its class label, as at inference) and on the text; the prompt is dropped 10% of the
   time, so classifier-free guidance has an unconditional branch to push away from.

The text encoder and tokenizer stay random (trainer/tiny.py: nothing can be downloaded); the prompt
acts as a learned label. Everything is seeded: the same pairs and settings give the same weights on
the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from PIL import Image

from trainer.config import PretrainConfig
from trainer.pipeline_onestep import encode_prompt
from trainer.tiny import (
    TEXT_DIM,
    UPSCALER_SCALING_FACTOR,
    tiny_text_encoder,
    upscaler_schedulers,
    write_tiny_tokenizer,
)

SCALE = 4  # the upscaler's VAE factor
MAX_NOISE_LEVEL = 350
PROMPT_DROPOUT = 0.1
CONFIG_FILE = "pretrain.json"


def vae_of(width: int, latent_channels: int) -> AutoencoderKL:
    # Three blocks: a factor-4 autoencoder, like the SD x4 upscaler's.
    return AutoencoderKL(
        block_out_channels=(16 * width, 16 * width, 32 * width),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=UPSCALER_SCALING_FACTOR,
    )


def unet_of(width: int, latent_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=latent_channels + 3,  # the noisy latent and the noised LQ image
        out_channels=latent_channels,
        block_out_channels=(32 * width, 64 * width),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
        num_class_embeds=MAX_NOISE_LEVEL + 1,
    )


class Pairs:
    """Aligned random crops of (LQ, HQ) pairs: an LQ crop of side crop/4 and the HQ crop 4 times it."""

    def __init__(self, pairs: Sequence[tuple[Image.Image, Image.Image]], crop: int, seed: int) -> None:
        if crop % 16:
            raise ValueError(f"crop must be a multiple of 16, got {crop}")
        self.lq, self.hq = [], []
        for lq, hq in pairs:
            if (hq.width // SCALE, hq.height // SCALE) != lq.size:
                raise ValueError(
                    f"an HQ image of {hq.size} needs an LQ image of 1/{SCALE} its size, got {lq.size}"
                )
            if min(lq.size) < crop // SCALE:
                raise ValueError(f"an LQ image of {lq.size} is smaller than the crop ({crop // SCALE} px)")
            self.lq.append(_tensor(lq))
            self.hq.append(_tensor(hq))
        if not self.lq:
            raise ValueError("no pairs to pretrain on")
        self.crop, self.rng = crop, np.random.default_rng(seed)

    def batch(self, size: int, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        side = (crop or self.crop) // SCALE
        lqs, hqs = [], []
        for index in self.rng.integers(len(self.lq), size=size):
            lq, hq = self.lq[index], self.hq[index]
            y = int(self.rng.integers(lq.shape[1] - side + 1))
            x = int(self.rng.integers(lq.shape[2] - side + 1))
            lq = lq[:, y : y + side, x : x + side]
            hq = hq[:, y * SCALE : (y + side) * SCALE, x * SCALE : (x + side) * SCALE]
            if self.rng.random() < 0.5:
                lq, hq = lq.flip(-1), hq.flip(-1)
            lqs.append(lq)
            hqs.append(hq)
        return torch.stack(lqs), torch.stack(hqs)


def _tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a (3, H, W) float tensor in [-1, 1]."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def train_vae(vae: AutoencoderKL, data: Pairs, cfg: PretrainConfig, log: list[dict]) -> None:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.vae_steps, 1))
    for step in range(cfg.vae_steps):
        _, hq = data.batch(cfg.batch_size, cfg.vae_crop)
        hq = hq.to(cfg.device)
        posterior = vae.encode(hq).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = F.l1_loss(recon, hq)
        loss = l1 + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            log.append({"stage": "vae", "step": step, "l1": l1.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        _, hq = data.batch(64)
        latents = vae.encode(hq.to(cfg.device)).latent_dist.mode()
        fold_latent_scale(vae, UPSCALER_SCALING_FACTOR * float(latents.std()))


def fold_latent_scale(vae: AutoencoderKL, std: float) -> None:
    """Divide the VAE's latents by `std` without changing what it decodes: the mean channels of
    `quant_conv` are divided, its log-variance channels shifted by -2 log(std), and `post_quant_conv`
    multiplies its input back.

    Stable Diffusion sets `scaling_factor` to 1 / std instead; `StableDiffusionUpscalePipeline` resets
    any value but 0.08333 when it is built (with a deprecation warning), so a model saved that way is
    sampled and fine-tuned at the wrong latent scale: outputs 14 dB under bicubic upsampling."""
    half = vae.config.latent_channels
    vae.quant_conv.weight[:half] /= std
    vae.quant_conv.bias[:half] /= std
    vae.quant_conv.bias[half:] -= 2 * math.log(std)
    vae.post_quant_conv.weight *= std
    vae.register_to_config(scaling_factor=UPSCALER_SCALING_FACTOR)


def train_unet(
    pipe: StableDiffusionUpscalePipeline, data: Pairs, cfg: PretrainConfig, log: list[dict]
) -> None:
    unet, vae = pipe.unet, pipe.vae
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
    with torch.no_grad():
        embeds = encode_prompt(pipe.tokenizer, pipe.text_encoder, [cfg.prompt, ""]).to(cfg.device)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.unet_steps, 1))
    level = torch.full((cfg.batch_size,), cfg.noise_level, device=cfg.device, dtype=torch.long)
    for step in range(cfg.unet_steps):
        lq, hq = data.batch(cfg.batch_size)
        lq, hq = lq.to(cfg.device), hq.to(cfg.device)
        with torch.no_grad():
            z = vae.encode(hq).latent_dist.mode() * vae.config.scaling_factor
        t = torch.randint(
            0, noise.config.num_train_timesteps, (len(z),), generator=generator, device=cfg.device
        )
        eps = torch.randn(z.shape, generator=generator, device=cfg.device)
        lq_noise = torch.randn(lq.shape, generator=generator, device=cfg.device)
        noisy_lq = pipe.low_res_scheduler.add_noise(lq, lq_noise, level)
        dropped = torch.rand(len(z), generator=generator, device=cfg.device) < PROMPT_DROPOUT
        text = embeds[dropped.long()]
        sample = torch.cat([noise.add_noise(z, eps, t), noisy_lq], dim=1)
        pred = unet(sample, t, encoder_hidden_states=text, class_labels=level, return_dict=False)[0]
        loss = F.mse_loss(pred, noise.get_velocity(z, eps, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == cfg.unet_steps - 1:
            log.append({"stage": "unet", "step": step, "loss": loss.item()})
    unet.eval().requires_grad_(False)


def pretrain(pairs: Sequence[tuple[Image.Image, Image.Image]], out: str | Path, cfg: PretrainConfig) -> Path:
    """Train the VAE, then the UNet, on `pairs` (LQ, HQ); write a diffusers folder that
    `StableDiffusionUpscalePipeline.from_pretrained` (and the `upscaler` backbone) loads, with the
    settings and the loss curve in `pretrain.json`."""
    out = Path(out)
    torch.manual_seed(cfg.seed)
    data = Pairs(pairs, cfg.crop, cfg.seed)
    tokenizer = write_tiny_tokenizer(out / "tokenizer")
    pipe = StableDiffusionUpscalePipeline(
        vae=vae_of(cfg.width, cfg.latent_channels),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=unet_of(cfg.width, cfg.latent_channels),
        **upscaler_schedulers(),
        max_noise_level=MAX_NOISE_LEVEL,
    ).to(cfg.device)
    pipe.text_encoder.requires_grad_(False)
    log: list[dict] = []
    started = time.monotonic()
    train_vae(pipe.vae, data, cfg, log)
    vae_seconds = time.monotonic() - started
    train_unet(pipe, data, cfg, log)
    pipe.to("cpu").save_pretrained(out)
    summary = {
        "config": dataclasses.asdict(cfg),
        "pairs": len(pairs),
        "vae_seconds": round(vae_seconds, 1),
        "unet_seconds": round(time.monotonic() - started - vae_seconds, 1),
        "log": log,
    }
    (out / CONFIG_FILE).write_text(json.dumps(summary, indent=2))
    return out


def read_pairs(lq_dir: str | Path, hq_dir: str | Path) -> list[tuple[Image.Image, Image.Image]]:
    """The pairs of two folders, matched by file name."""
    pairs = []
    for hq_path in sorted(Path(hq_dir).iterdir()):
        lq_path = Path(lq_dir) / hq_path.name
        if not lq_path.is_file():
            raise ValueError(f"{hq_path.name} is in {hq_dir} but not in {lq_dir}")
        pairs.append((Image.open(lq_path).convert("RGB"), Image.open(hq_path).convert("RGB")))
    return pairs
