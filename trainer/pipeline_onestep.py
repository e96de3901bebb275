"""An OSEDiff-style one-step super-resolution pipeline: LQ latent -> UNet at a fixed timestep -> x0 -> VAE.

The LQ image is upsampled (bicubic) to the output size and encoded by the VAE; its latent is treated as the
noisy sample x_t at `timestep`, the UNet's prediction is turned into x0 in one step, and x0 is decoded.
`one_step_latents` is the single definition of that generator, shared by this pipeline and the trainer.
LoRA weights may cover the UNet and the VAE encoder; `load_lora_weights` loads both.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer


def x0_from_prediction(
    pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * pred) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * pred
    if prediction_type == "sample":
        return pred
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def one_step_latents(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    timestep: int,
    lq_up: torch.Tensor,
    prompt_embeds: torch.Tensor,
) -> torch.Tensor:
    """G(y): the SR latent (scaled like the VAE's latents) for upsampled LQ images in [-1, 1]."""
    # The mode, not a sample: G must be a deterministic function of y for the surrogate likelihood of SPEC §4.
    z_lq = vae.encode(lq_up).latent_dist.mode() * vae.config.scaling_factor
    t = torch.full((z_lq.shape[0],), timestep, device=z_lq.device, dtype=torch.long)
    pred = unet(z_lq, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
    alpha_bar = scheduler.alphas_cumprod.to(device=z_lq.device, dtype=torch.float32)[timestep]
    return x0_from_prediction(pred.float(), z_lq.float(), alpha_bar, scheduler.config.prediction_type)


def upsample_lq(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling of LQ images in [-1, 1] to the SR size, the same in training and inference."""
    return torch.nn.functional.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(
        -1, 1
    )


def encode_prompt(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device), return_dict=False)[0]


class OneStepSRPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->vae->unet"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        timestep: int = 999,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.register_to_config(timestep=timestep)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # No resizing: the LQ size need not be a multiple of the VAE factor, only the upsampled size must.
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str,
        unet_lora_layers: dict[str, torch.Tensor],
        vae_lora_layers: dict[str, torch.Tensor] | None = None,
        unet_lora_adapter_metadata: dict | None = None,
        vae_lora_adapter_metadata: dict | None = None,
    ) -> None:
        layers = {"unet": unet_lora_layers}
        metadata = {"unet": unet_lora_adapter_metadata}
        if vae_lora_layers:
            layers["vae"] = vae_lora_layers
            metadata["vae"] = vae_lora_adapter_metadata
        cls._save_lora_weights(save_directory=save_directory, lora_layers=layers, lora_metadata=metadata)

    def load_lora_weights(
        self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, **kwargs
    ):
        state_dict, network_alphas, metadata = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        if not all("lora" in key for key in state_dict):
            raise ValueError("not a LoRA checkpoint: some parameter names lack 'lora'")
        self.load_lora_into_unet(
            state_dict,
            network_alphas=network_alphas,
            unet=self.unet,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
        )
        if any(key.startswith("vae.") for key in state_dict):
            self.vae.load_lora_adapter(
                state_dict,
                prefix="vae",
                network_alphas=network_alphas,
                adapter_name=adapter_name,
                metadata=metadata,
                _pipeline=self,
            )

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | list[Image.Image],
        prompt: str | list[str] = "",
        scale: int = 4,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        images = [image] if isinstance(image, Image.Image) else list(image)
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        m = self.vae_scale_factor
        for lq in images:
            if (lq.width * scale) % m or (lq.height * scale) % m:
                raise ValueError(
                    f"output size {lq.width * scale}x{lq.height * scale} must be a multiple of {m}"
                )
        lq = self.image_processor.preprocess([im.convert("RGB") for im in images])
        lq_up = upsample_lq(lq.to(device=self._execution_device, dtype=self.vae.dtype), scale)
        embeds = encode_prompt(self.tokenizer, self.text_encoder, prompts).to(self.unet.dtype)
        latents = one_step_latents(self.unet, self.vae, self.scheduler, self.config.timestep, lq_up, embeds)
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        if output_type == "latent":
            out = latents
        else:
            out = self.vae.decode(latents, return_dict=False)[0]
            out = self.image_processor.postprocess(out, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
