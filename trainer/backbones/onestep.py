"""One-step backbone, OSEDiff style: G(y) = x0 predicted by the UNet from the LQ latent at a fixed timestep.

There is no noise and no timestep to sample, so G(y) is computed once per record and compared with both the
winner's and the loser's latents (SPEC §4). The targets are encoded by the reference VAE, so that LoRA on
the VAE encoder changes G and never the targets it is judged against.
"""

from __future__ import annotations

import torch

from trainer.backbones.base import Backbone, Batch, Nets, StepInputs
from trainer.backbones.upscaler import UNET_LORA_TARGETS
from trainer.pipeline_onestep import OneStepSRPipeline, one_step_latents, upsample_lq

# peft matches a string target as a regular expression over the full module name: the encoder only.
VAE_ENCODER_LORA_TARGETS = r"encoder\..*(conv1|conv2|conv_shortcut|to_q|to_k|to_v|to_out\.0)"


class OneStepBackbone(Backbone):
    name = "onestep"
    pipeline_class = OneStepSRPipeline

    def __init__(
        self, model_dir: str, dtype: torch.dtype = torch.float32, lora_vae_encoder: bool = False
    ) -> None:
        super().__init__(model_dir, dtype)
        self.lora_targets = {"unet": UNET_LORA_TARGETS}
        if lora_vae_encoder:
            self.lora_targets["vae"] = VAE_ENCODER_LORA_TARGETS

    def check_scale(self, scale: int) -> None:
        # The LQ image is upsampled to the SR size before encoding, so any integer factor works.
        return None

    def size_multiple(self, scale: int) -> int:
        levels = len(self.pipe.unet.config.block_out_channels) - 1
        return self.vae_factor * 2**levels

    def prepare(self, batch: Batch, nets: Nets, generator: torch.Generator, losers: bool) -> StepInputs:
        images = torch.cat([batch.winner, batch.loser]) if losers else batch.winner
        z = self.encode_images(nets["vae"], images)
        scale = batch.winner.shape[-1] // batch.lq.shape[-1]
        args = {"lq_up": upsample_lq(batch.lq, scale), "prompt_embeds": self.encode_text(batch.text)}
        k, b = (2 if losers else 1), batch.winner.shape[0]
        mask = self.latent_mask(batch.mask, z.shape[-2:])
        return StepInputs(args=args, target=z.unflatten(0, (k, b)), mask=mask)

    def predict(self, nets: Nets, inputs: StepInputs) -> torch.Tensor:
        pred = one_step_latents(
            nets["unet"], nets["vae"], self.pipe.scheduler, self.pipe.config.timestep, **inputs.args
        )
        return pred.unsqueeze(0)
