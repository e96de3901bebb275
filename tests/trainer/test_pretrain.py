"""`dspo pretrain`: a small x4 upscaler trained from scratch on (LQ, HQ) pairs is a diffusers folder
that the upscaler's pipeline and the trainer's backbone load, reproducibly from its seed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionUpscalePipeline
from PIL import Image
from safetensors.torch import load_file

from dspo.cli import main
from trainer.backbones.upscaler import UpscalerBackbone
from trainer.pretrain import fold_latent_scale, vae_of


def write_pairs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    lq_dir, hq_dir = root / "lq", root / "hq"
    lq_dir.mkdir()
    hq_dir.mkdir()
    for n in range(2):
        hq = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
        hq.save(hq_dir / f"{n}.png")
        hq.resize((24, 16), Image.Resampling.BICUBIC).save(lq_dir / f"{n}.png")
    return lq_dir, hq_dir


def pretrain(lq: Path, hq: Path, out: Path) -> int:
    steps = ["--vae-steps", "2", "--unet-steps", "2", "--crop", "32", "--vae-crop", "16", "--batch-size", "2"]
    return main(["pretrain", "--lq", str(lq), "--hq", str(hq), "--output-dir", str(out), *steps])


def test_a_pretrained_model_loads_runs_and_is_reproducible(tmp_path: Path) -> None:
    lq, hq = write_pairs(tmp_path)
    assert pretrain(lq, hq, tmp_path / "a") == 0
    assert pretrain(lq, hq, tmp_path / "b") == 0
    for part in ("unet", "vae"):
        a = load_file(tmp_path / "a" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "b" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    pipe = StableDiffusionUpscalePipeline.from_pretrained(tmp_path / "a")
    assert pipe.vae.config.latent_channels == 8 and pipe.vae.config.scaling_factor == 0.08333
    assert not pipe.scheduler.config.clip_sample  # latents are unit-variance, not in [-1, 1]
    image, seed = Image.open(lq / "0.png"), torch.Generator().manual_seed(0)
    out = pipe(prompt="a photo", image=image, num_inference_steps=2, generator=seed)
    assert out.images[0].size == (96, 64)
    UpscalerBackbone(str(tmp_path / "a")).check_scale(4)


def test_pairs_that_do_not_match_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lq, hq = write_pairs(tmp_path)
    Image.new("RGB", (20, 16)).save(lq / "0.png")
    assert pretrain(lq, hq, tmp_path / "out") == 2
    assert "needs an LQ image of 1/4 its size" in capsys.readouterr().err


def test_folding_the_latent_scale_keeps_reconstructions_and_scales_latents() -> None:
    torch.manual_seed(0)
    vae = vae_of(width=1, latent_channels=8).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        recon = vae.decode(before.mode()).sample
        fold_latent_scale(vae, 4.0)
        after = vae.encode(images).latent_dist
        assert torch.allclose(after.mode(), before.mode() / 4, atol=1e-5)
        assert torch.allclose(after.std, before.std / 4, atol=1e-5)
        assert torch.allclose(vae.decode(after.mode()).sample, recon, atol=1e-4)
    assert vae.config.scaling_factor == 0.08333
