"""The model card written next to the trained weights: what was trained, on which data, and how it did."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import TrainConfig

PIPELINES = {
    "upscaler": "StableDiffusionUpscalePipeline",
    "onestep": "trainer.pipeline_onestep.OneStepSRPipeline",
}


def write_model_card(out: Path, cfg: TrainConfig, manifest: dict, metrics: dict[str, float]) -> Path:
    kind = f"LoRA (rank {cfg.lora_rank})" if cfg.lora_rank else "fully fine-tuned networks"
    pipeline = PIPELINES[cfg.backbone]
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    if cfg.lora_rank:
        usage = f'pipe = {pipeline.rsplit(".", 1)[-1]}.from_pretrained(BASE)\npipe.load_lora_weights("{out}")'
    else:
        usage = f"# load the fine-tuned networks from {out}/<name> and pass them to {pipeline}"
    text = f"""---
library_name: diffusers
base_model: {cfg.model}
tags: [super-resolution, dspo, {cfg.loss}, {cfg.backbone}]
---

# {cfg.backbone} tuned with {cfg.loss.upper()}: {kind}

Trained by the DSPO trainer with the `{cfg.loss}` loss ({cfg.loss_type}, beta {cfg.beta:g})
on the `{cfg.backbone}` backbone from `{cfg.model}`.

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

## Metrics (last logged window and held-out validation)

| metric | value |
|---|---|
{rows}

## Use

```python
{usage}
```
"""
    path = out / "README.md"
    path.write_text(text)
    return path
