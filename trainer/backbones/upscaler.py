"""Multi-step backbone: the Stable Diffusion x4 upscaler architecture.

Its UNet takes 7 channels, the noisy latent (4) and the LQ image (3) noised to `noise_level`, which is also
its class label; its VAE has a factor of 4, so latents are LQ-sized. It predicts eps or v, as its scheduler
says.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

from trainer.backbones.base import Backbone, Batch, Nets, StepInputs

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class UpscalerBackbone(Backbone):
    name = "upscaler"
    pipeline_class = StableDiffusionUpscalePipeline

    def __init__(self, model_dir: str, dtype: torch.dtype = torch.float32, noise_level: int = 20) -> None:
        super().__init__(model_dir, dtype)
        if not 0 <= noise_level <= self.pipe.config.max_noise_level:
            raise ValueError(
                f"noise_level must be in [0, {self.pipe.config.max_noise_level}], got {noise_level}"
            )
        self.noise_level = noise_level
        self.lora_targets = {"unet": UNET_LORA_TARGETS}
        # Training noise follows the inference scheduler's schedule and parameterisation.
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type

    def check_scale(self, scale: int) -> None:
        if scale != self.vae_factor:
            raise ValueError(
                f"the upscaler's VAE has factor {self.vae_factor}; the dataset has scale {scale}"
            )

    def size_multiple(self, scale: int) -> int:
        levels = len(self.pipe.unet.config.block_out_channels) - 1
        return scale * 2**levels

    def prepare(self, batch: Batch, nets: Nets, generator: torch.Generator, losers: bool) -> StepInputs:
        images = torch.cat([batch.winner, batch.loser]) if losers else batch.winner
        k, b = (2 if losers else 1), batch.winner.shape[0]
        z = self.encode_images(nets["vae"], images)
        device = z.device
        # The same t and eps for winner and loser (SPEC §3): their errors differ only through the images.
        t = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator, device=device
        ).repeat(k)
        eps = torch.randn((b, *z.shape[1:]), generator=generator, device=device, dtype=z.dtype).repeat(
            k, 1, 1, 1
        )
        noisy = self.noise_scheduler.add_noise(z, eps, t)
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z, eps, t)
        elif self.prediction_type == "epsilon":
            target = eps
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

        level = torch.full((b,), self.noise_level, device=device, dtype=torch.long)
        lq_noise = torch.randn(batch.lq.shape, generator=generator, device=device, dtype=batch.lq.dtype)
        lq = self.pipe.low_res_scheduler.add_noise(batch.lq, lq_noise, level)
        embeds = self.encode_text(batch.text)
        args = {
            "sample": torch.cat([noisy, lq.repeat(k, 1, 1, 1)], dim=1),
            "timestep": t,
            "encoder_hidden_states": embeds.repeat(k, 1, 1),
            "class_labels": level.repeat(k),
        }
        mask = self.latent_mask(batch.mask, z.shape[-2:])
        return StepInputs(args=args, target=target.unflatten(0, (k, b)), mask=mask)

    def predict(self, nets: Nets, inputs: StepInputs) -> torch.Tensor:
        pred = nets["unet"](**inputs.args, return_dict=False)[0]
        return pred.unflatten(0, (inputs.target.shape[0], -1))
