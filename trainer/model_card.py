"""The model card written next to the trained weights: what was trained, on which data, and how it did.

It is ready for the Hugging Face Hub: YAML metadata the Hub validates (`base_model` a Hub id, never a local
path; `tags` once each; `datasets`, `license`, `pipeline_tag`) and a usage snippet that runs as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from trainer.config import TrainConfig

PIPELINES = {
    "upscaler": ("diffusers", "StableDiffusionUpscalePipeline"),
    "onestep": ("trainer.pipeline_onestep", "OneStepSRPipeline"),
}
# A model downloaded by huggingface_hub lives in .../models--{owner}--{name}/snapshots/{revision}.
HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def hub_id(cfg: TrainConfig) -> str | None:
    """The base model's Hub id: `--hub-base-model`, or read from a Hugging Face cache path; else None."""
    if cfg.hub_base_model:
        return cfg.hub_base_model
    found = HUB_CACHE.search(Path(cfg.model).as_posix())
    return f"{found[1]}/{found[2]}" if found else None


def usage(cfg: TrainConfig, out: Path, base: str) -> str:
    module, pipeline = PIPELINES[cfg.backbone]
    lines = ["from PIL import Image", f"from {module} import {pipeline}"]
    if cfg.lora_rank:
        lines += ["", f"pipe = {pipeline}.from_pretrained({base!r})", f"pipe.load_lora_weights({str(out)!r})"]
    else:
        lines[1:1] = ["from diffusers import UNet2DConditionModel"]
        lines += [
            "",
            f"unet = UNet2DConditionModel.from_pretrained({str(out / 'unet')!r})",
            f"pipe = {pipeline}.from_pretrained({base!r}, unet=unet)",
        ]
    lines.append('low_res = Image.open("low_res.png").convert("RGB")')
    if cfg.backbone == "upscaler":
        lines.append('image = pipe(prompt="a photo", image=low_res).images[0]')
    else:
        lines.append('image = pipe(low_res, prompt="a photo").images[0]')
    lines.append('image.save("upscaled.png")')
    return "\n".join(lines)


def write_model_card(
    out: Path, cfg: TrainConfig, manifest: dict, metrics: dict[str, float], records: dict
) -> Path:
    kind = f"LoRA (rank {cfg.lora_rank})" if cfg.lora_rank else "fully fine-tuned networks"
    base_id = hub_id(cfg)
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    tags = list(
        dict.fromkeys(
            ["super-resolution", "dspo", cfg.loss, cfg.backbone, "lora" if cfg.lora_rank else "full"]
        )
    )
    meta = {
        "library_name": "diffusers",
        "pipeline_tag": "image-to-image",
        "license": cfg.license,
        "tags": tags,
        "datasets": [cfg.hub_dataset or manifest.get("dataset_id")],
    }
    if base_id:
        meta = {"base_model": base_id, **meta}
    # JSON is YAML: every value is quoted and escaped as the Hub's YAML parser expects.
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in meta.items())
    base_text = (
        f"`{base_id}`" if base_id else f"the local folder `{cfg.model}` (no Hub id given: `--hub-base-model`)"
    )
    val = records["val"]
    if val:
        held_out = "held-out validation on " + ", ".join(f"{n} {k} records" for k, n in val.items())
    else:
        held_out = "no held-out validation: the dataset's val split is empty, so there are no `val_*` metrics"
    text = f"""---
{front}
---

# {cfg.backbone} tuned with {cfg.loss.upper()}: {kind}

Trained by the DSPO trainer with the `{cfg.loss}` loss ({cfg.loss_type}, beta {cfg.beta:g}) on the
`{cfg.backbone}` backbone from {base_text}.

Trained on: {records["trained_on"]} (train split: {records["train"]["instance"]} instance, \
{records["train"]["image"]} image-level); {held_out}.

## Dataset

| field | value |
|---|---|
| dataset_id | {manifest.get("dataset_id")} |
| version | {manifest.get("version")} |
| project | {manifest.get("project")} |
| digest (sha256) | {manifest.get("digest")} |
| records | {manifest.get("counts", {}).get("records")} |

## Settings

```json
{json.dumps(cfg.to_dict(), indent=2)}
```

## Metrics (last logged window; {held_out})

| metric | value |
|---|---|
{rows}

## Use

```python
{usage(cfg, out, base_id or cfg.model)}
```
"""
    path = out / "README.md"
    path.write_text(text)
    return path
