"""Diffusion SR candidates: a diffusers pipeline from a local folder (the trainer's backbones: the x4
upscaler, or the one-step model), optionally with a registered LoRA (a project's tuned model version).

Candidate i uses seed + i and the i-th entry (cycled) of the project's `guidance`, `steps` and
`prompts` lists, so candidate i of a seed is the same whatever n is. With `vary_seed: false` every
candidate of a source uses its seed: candidates then differ by their settings alone, not also by where
each sample's noise lands. Candidates that share guidance, steps and prompt run as one batch (one
generator per image). The one-step backbone is deterministic: its candidates can differ only by prompt,
so it needs n distinct prompts.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from worker.generators.base import Candidate, GeneratorUnavailable, check_request

BACKBONES = ("upscaler", "onestep")


def _digest(model: str, lora: str | None) -> str:
    """sha256 over the weight files of the model folder and the LoRA: names the exact weights used."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model).rglob("*") if p.suffix in (".safetensors", ".bin"))
    if lora:
        files += sorted(p for p in Path(lora).glob("*.safetensors"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# Jobs that run in-process run in threads, and neither loading (accelerate's empty-weights context
# patches torch globally: a second load at the same time gets meta tensors) nor running a pipeline (its
# scheduler keeps the timesteps of the current call) is thread-safe: one generation at a time.
_ONE_AT_A_TIME = threading.Lock()


@lru_cache(maxsize=2)
def _pipeline(backbone: str, model: str, lora: str | None, device: str) -> tuple[Any, str]:
    """Loading a pipeline takes seconds; a worker process keeps the last two it used."""
    try:
        from trainer.evaluate import load_pipeline
    except ImportError as exc:
        raise GeneratorUnavailable(
            f"the diffusion generator needs the [train] extra (torch, diffusers): {exc}"
        ) from exc
    return load_pipeline(backbone, model, lora, device), _digest(model, lora)


class DiffusionGenerator:
    name = "diffusion"

    def __init__(
        self,
        model: str,
        backbone: str = "upscaler",
        lora: str | None = None,
        guidance: Sequence[float] = (5.0, 7.5, 9.0, 12.0),
        steps: Sequence[int] = (20, 30, 40, 50),
        prompts: Sequence[str] = ("",),
        noise_level: int = 20,
        batch_size: int = 4,
        device: str = "cpu",
        vary_seed: bool = True,
    ) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if not Path(model).is_dir():
            raise ValueError(f"model {model!r} is not a local diffusers folder")
        if lora is not None and not Path(lora).is_dir():
            raise ValueError(f"lora {lora!r} is not a folder with LoRA weights")
        if not isinstance(vary_seed, bool):  # JSON settings: "false" would be true
            raise ValueError(f"vary_seed must be true or false, got {vary_seed!r}")
        if not guidance or not steps or not prompts or batch_size < 1:
            raise ValueError("guidance, steps and prompts need at least one value, batch_size >= 1")
        self.model, self.backbone, self.lora = model, backbone, lora
        self.guidance, self.steps, self.prompts = list(guidance), list(steps), list(prompts)
        self.noise_level, self.batch_size, self.device = noise_level, batch_size, device
        self.vary_seed = vary_seed

    def seed_of(self, index: int, seed: int) -> int:
        return seed + index if self.vary_seed else seed

    def settings_of(self, index: int) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "backbone": self.backbone,
            "prompt": self.prompts[index % len(self.prompts)],
        }
        if self.backbone == "upscaler":
            settings |= {
                "guidance": self.guidance[index % len(self.guidance)],
                "steps": self.steps[index % len(self.steps)],
                "noise_level": self.noise_level,
            }
        if self.lora:
            settings["lora"] = self.lora
        return settings

    def generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]:
        check_request(lq, scale=scale, n=n)
        if self.backbone == "upscaler" and scale != 4:
            raise ValueError(f"the upscaler backbone makes x4 images; the project's scale is {scale}")
        if self.backbone == "onestep" and len({self.prompts[i % len(self.prompts)] for i in range(n)}) < n:
            raise ValueError("the one-step backbone is deterministic: give n distinct prompts")
        settings = {tuple(sorted(self.settings_of(i).items())) for i in range(n)}
        if not self.vary_seed and len(settings) < n:
            raise ValueError(
                f"with vary_seed false the {n} candidates differ only by guidance, steps and prompt, and "
                f"these lists give {len(settings)} distinct combinations: lengthen them or set vary_seed true"
            )
        with _ONE_AT_A_TIME:
            return self._generate(lq, scale=scale, n=n, seed=seed)

    def _generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]:
        import torch

        pipe, digest = _pipeline(self.backbone, self.model, self.lora, self.device)
        lq = lq.convert("RGB")
        groups: dict[tuple, list[int]] = {}
        for index in range(n):
            key = tuple(sorted(self.settings_of(index).items()))
            groups.setdefault(key, []).append(index)
        images: dict[int, Image.Image] = {}
        for key, indices in groups.items():
            settings = dict(key)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                if self.backbone == "upscaler":
                    generators = [
                        torch.Generator(pipe.device).manual_seed(self.seed_of(i, seed)) for i in batch
                    ]
                    out = pipe(
                        prompt=settings["prompt"],
                        image=lq,
                        num_inference_steps=settings["steps"],
                        guidance_scale=settings["guidance"],
                        noise_level=settings["noise_level"],
                        num_images_per_prompt=len(batch),
                        generator=generators,
                    ).images
                else:
                    out = pipe([lq] * len(batch), prompt=settings["prompt"], scale=scale).images
                images.update(zip(batch, out, strict=True))
        want = (lq.width * scale, lq.height * scale)
        if images[0].size != want:
            raise ValueError(f"the model made {images[0].size} images, the project wants {want}")
        return [
            Candidate(
                image=images[i],
                generator=self.name,
                model=self.model,
                settings=self.settings_of(i),
                seed=self.seed_of(i, seed),
                weights_digest=digest,
            )
            for i in range(n)
        ]
