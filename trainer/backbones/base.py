"""The interface between the training loop and an SR architecture.

A backbone turns a batch of (LQ, winner, loser, mask, text) crops into `StepInputs` without gradients
(`prepare`), and maps those inputs to predictions with whichever networks it is given (`predict`): the
trained ones or the reference ones. Predictions are compared with `StepInputs.target` by the losses, which
know nothing about architectures. A SeeSR-style ControlNet backbone is one more subclass: its `prepare`
adds the ControlNet's conditioning, its `predict` calls ControlNet then UNet, and `trainable` names both.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

Nets = dict[str, torch.nn.Module]


@dataclasses.dataclass
class Batch:
    """A collated batch of training crops; images in [-1, 1], masks in [0, 1] at SR resolution."""

    lq: torch.Tensor  # (B, 3, h, w)
    winner: torch.Tensor  # (B, 3, H, W)
    loser: torch.Tensor  # (B, 3, H, W)
    mask: torch.Tensor  # (B, 1, H, W)
    weight: torch.Tensor  # (B,)
    text: list[str]
    cursor: tuple[int, int]  # (epoch, batch index after this batch) for an exact resume

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Batch:
        move = {f: getattr(self, f).to(device=device, dtype=dtype) for f in ("lq", "winner", "loser", "mask")}
        return dataclasses.replace(self, **move, weight=self.weight.to(device=device, dtype=torch.float32))


@dataclasses.dataclass
class StepInputs:
    args: dict[str, torch.Tensor]  # what `predict` needs, computed without gradients
    target: torch.Tensor  # (K, B, C, h, w): K = 2 (winner, loser), or 1 (winner) for SFT
    mask: torch.Tensor  # (B, 1, h, w), the instance mask at latent resolution


class Backbone(abc.ABC):
    name: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    # The modules that LoRA (or full fine-tuning) changes, and the peft target modules of each.
    lora_targets: dict[str, list[str] | str]

    def __init__(self, model_dir: str, dtype: torch.dtype = torch.float32) -> None:
        self.model_dir = model_dir
        self.pipe = self.pipeline_class.from_pretrained(model_dir, dtype=dtype)
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()
        self.vae_factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def modules(self) -> Nets:
        return {k: v for k, v in self.pipe.components.items() if isinstance(v, torch.nn.Module)}

    def to(self, device: torch.device | str) -> Backbone:
        self.pipe.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @abc.abstractmethod
    def check_scale(self, scale: int) -> None:
        """Raise ValueError when the backbone cannot learn from data of this SR factor."""

    @abc.abstractmethod
    def size_multiple(self, scale: int) -> int:
        """Crop sizes (SR pixels) must be multiples of this."""

    @abc.abstractmethod
    def prepare(self, batch: Batch, nets: Nets, generator: torch.Generator, losers: bool) -> StepInputs:
        """Latents, noise, timesteps and conditioning for one step; `nets` are the reference networks."""

    @abc.abstractmethod
    def predict(self, nets: Nets, inputs: StepInputs) -> torch.Tensor:
        """Predictions shaped like `inputs.target`, or (1, B, ...) when one prediction serves both images."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from trainer.pipeline_onestep import encode_prompt

        return encode_prompt(self.pipe.tokenizer, self.pipe.text_encoder, texts)

    def encode_images(self, vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        # The mode, not a sample: the winner's and loser's latents must not add noise of their own to the
        # preference signal, and the posterior's spread is tiny for an SD VAE.
        return vae.encode(images).latent_dist.mode() * vae.config.scaling_factor

    def latent_mask(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(mask.float(), size=size, mode="area")
