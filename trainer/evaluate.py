"""Run a backbone, base or with a LoRA, on held-out LQ images: outputs, PSNR/SSIM, and an A/B set.

The A/B set is a folder the annotation service imports as blind tasks: `manifest.json` lists pairs of SR
images (`a` = base, `b` = tuned; the service shuffles what annotators see) with the LQ image they share.
Its format is documented in docs/trainer.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dspo.dataset_format import image_path, read_records, verify_dataset
from trainer.backbones import BACKBONES

AB_FORMAT = "dspo-ab"
AB_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_pipeline(backbone: str, model_dir: str, lora: str | None = None, device: str = "cpu"):
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    pipe = BACKBONES[backbone].pipeline_class.from_pretrained(model_dir)
    if lora:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def super_resolve(pipe, lq: Image.Image, prompt: str, seed: int, steps: int, scale: int) -> Image.Image:
    generator = torch.Generator(pipe.device).manual_seed(seed)
    if hasattr(pipe, "low_res_scheduler"):
        return pipe(prompt=prompt, image=lq, num_inference_steps=steps, generator=generator).images[0]
    return pipe(lq, prompt=prompt, scale=scale).images[0]


def held_out_inputs(dataset: str | None, lq_dir: str | None) -> list[tuple[str, Image.Image, str]]:
    """(name, LQ image, prompt) of the dataset's val split (one per LQ image), or of every image in lq_dir."""
    items = []
    if dataset:
        verify_dataset(dataset)
        seen = set()
        for record in read_records(dataset):
            if record.split == "val" and record.lq not in seen:
                seen.add(record.lq)
                items.append(
                    (
                        record.source_id,
                        Image.open(image_path(dataset, record.lq)).convert("RGB"),
                        record.prompt,
                    )
                )
    if lq_dir:
        for path in sorted(Path(lq_dir).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path.stem, Image.open(path).convert("RGB"), ""))
    if not items:
        raise ValueError("no held-out LQ images: give a dataset with a val split or a folder of images")
    return items


def quality(output: Image.Image, hq_path: Path) -> dict[str, float]:
    hq = np.asarray(Image.open(hq_path).convert("RGB"))
    out = np.asarray(output.convert("RGB"))
    if hq.shape != out.shape:
        raise ValueError(
            f"{hq_path}: HQ is {hq.shape[1]}x{hq.shape[0]}, output is {out.shape[1]}x{out.shape[0]}"
        )
    return {
        "psnr": float(peak_signal_noise_ratio(hq, out, data_range=255)),
        "ssim": float(structural_similarity(hq, out, channel_axis=2, data_range=255)),
    }


def evaluate(
    backbone: str,
    model_dir: str,
    out_dir: str,
    lora: str | None = None,
    dataset: str | None = None,
    lq_dir: str | None = None,
    hq_dir: str | None = None,
    scale: int = 4,
    steps: int = 20,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Super-resolve the held-out LQ images with the base model, and with the LoRA when given.

    Writes `<out>/lq`, `<out>/base` (and `<out>/tuned`), `metrics.json` and, with a LoRA, the A/B
    `manifest.json`. Returns the metrics.
    """
    out = Path(out_dir)
    items = held_out_inputs(dataset, lq_dir)
    variants = {"base": None, **({"tuned": lora} if lora else {})}
    metrics: dict = {"images": len(items), "variants": {}}
    for folder in ("lq", *variants):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for name, lq, _ in items:
        lq.save(out / "lq" / f"{name}.png")
    for variant, weights in variants.items():
        pipe = load_pipeline(backbone, model_dir, weights, device)
        scores = []
        for name, lq, prompt in items:
            output = super_resolve(pipe, lq, prompt, seed, steps, scale)
            output.save(out / variant / f"{name}.png")
            hq = (
                next((p for p in (Path(hq_dir) / f"{name}{s}" for s in IMAGE_SUFFIXES) if p.exists()), None)
                if hq_dir
                else None
            )
            if hq is not None:
                scores.append({"image": name, **quality(output, hq)})
        summary: dict = {"weights": weights or model_dir, "per_image": scores}
        if scores:
            summary["psnr"] = float(np.mean([s["psnr"] for s in scores]))
            summary["ssim"] = float(np.mean([s["ssim"] for s in scores]))
        metrics["variants"][variant] = summary
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if lora:
        write_ab_manifest(out, items, backbone, model_dir, lora)
    return metrics


def write_ab_manifest(out: Path, items: list, backbone: str, model_dir: str, lora: str) -> Path:
    manifest = {
        "format": AB_FORMAT,
        "version": AB_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": {
            "a": {"name": "base", "backbone": backbone, "model": model_dir},
            "b": {"name": "tuned", "backbone": backbone, "model": model_dir, "lora": lora},
        },
        "pairs": [
            {
                "id": name,
                "lq": f"lq/{name}.png",
                "a": f"base/{name}.png",
                "b": f"tuned/{name}.png",
                "prompt": prompt,
            }
            for name, _, prompt in items
        ],
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
