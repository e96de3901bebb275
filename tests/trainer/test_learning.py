"""DSPO learns a local preference that image-level DPO, on the same pairs, learns less well inside the masks.

In the synthetic set the loser is the winner plus stripes inside the instance mask and identical elsewhere.
The held-out metric is the implicit accuracy and reward margin under the instance masks, on sources never
trained on, with fixed noise draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from synthetic import make_conflict_dataset, make_dataset

from trainer.config import TrainConfig
from trainer.train import train


@pytest.mark.slow
def test_dspo_learns_the_masked_preference_better_than_image_level_dpo(tiny_models, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", sources=16, val_sources=4)
    results = {}
    for loss in ("dspo", "dpo"):
        cfg = TrainConfig(
            dataset=str(data),
            model=str(tiny_models["upscaler"]),
            output_dir=str(tmp_path / loss),
            backbone="upscaler",
            loss=loss,
            resolution=32,
            batch_size=4,
            max_steps=40,
            log_every=20,
            learning_rate=1e-3,
            lora_rank=8,
            beta=5000.0,
            text_feedback=False,
            val_repeats=4,
            progress=False,
        )
        results[loss] = train(cfg).metrics
    dspo, dpo = results["dspo"], results["dpo"]
    assert dspo["val_instance_accuracy"] >= 0.75, dspo
    assert dspo["val_instance_reward_margin"] > 1.0, dspo
    assert dspo["val_instance_accuracy"] > dpo["val_instance_accuracy"] + 0.1, (dspo, dpo)
    assert dspo["val_instance_reward_margin"] > dpo["val_instance_reward_margin"] + 1.0, (dspo, dpo)


def region_accuracies(cfg: TrainConfig, pipeline, data: Path) -> list[float]:
    """Held-out implicit accuracy per region (instance ids ending in -i0 and -i1), measured as the trainer
    validates: the trained pipeline against itself with adapters disabled, fixed noise, instance masks."""
    from accelerate import Accelerator

    from trainer.backbones import load_backbone
    from trainer.data import PreferenceDataset
    from trainer.train import Reference, validate

    backbone = load_backbone(cfg.backbone, cfg.model)
    backbone.pipe = pipeline
    reference = Reference(backbone, {"unet": pipeline.unet}, lora=True, dtype=torch.float32)
    sets = {}
    for m in (0, 1):
        region = PreferenceDataset(data, "val", (cfg.resolution,), text_feedback=False, random_crops=False)
        # One region's records only: the dataset reader has no filter, so its entries are narrowed here.
        region.entries = [e for e in region.entries if e.record.instance_id.endswith(f"-i{m}")]
        region.records = [e.record for e in region.entries]
        sets[f"region{m}"] = region
    metrics = validate(
        cfg, backbone, backbone.modules(), reference, sets, Accelerator(cpu=True), torch.float32
    )
    return [metrics[f"val_region{m}_accuracy"] for m in (0, 1)]


SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # six short trainings: about 2 min on 2 quiet cores, far more on loaded ones
def test_dspo_learns_conflicting_regions_that_image_level_dpo_cannot(tiny_models, tmp_path: Path) -> None:
    """Candidate A is better on the left and worse on the right: the instance records say so, the
    image-level votes split. DSPO learns both regions; image-level DPO on the image-level votes cannot."""
    results: dict[str, list[list[float]]] = {"dspo": [], "dpo": []}
    for seed in SEEDS:
        data = make_conflict_dataset(tmp_path / f"ds{seed}", sources=16, val_sources=8, seed=seed)
        for loss in results:
            cfg = TrainConfig(
                dataset=str(data),
                model=str(tiny_models["upscaler"]),
                output_dir=str(tmp_path / f"{loss}{seed}"),
                backbone="upscaler",
                loss=loss,
                resolution=32,
                batch_size=4,
                max_steps=40,
                log_every=40,
                learning_rate=1e-3,
                lora_rank=8,
                beta=5000.0,
                text_feedback=False,
                val_repeats=4,
                seed=seed,
                progress=False,
            )
            result = train(cfg)
            results[loss].append(region_accuracies(cfg, result.pipeline, data))
            AcceleratorState._reset_state()
    summary = {
        loss: {
            f"region{m}": (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs])))
            for m in (0, 1)
        }
        for loss, runs in results.items()
    }
    print("per-region held-out accuracy, mean and spread over seeds", SEEDS, summary, results)
    dspo_worst = [min(r) for r in results["dspo"]]  # each seed's weaker region
    dpo_worst = [min(r) for r in results["dpo"]]
    # Measured (docs/trainer.md): DSPO's weaker region 0.66 to 0.88 (mean 0.74), image-level DPO's 0.44 to
    # 0.75 (mean 0.57). Image-level DPO in DSPO's place fails the first assertion and the margin.
    assert np.mean(dspo_worst) >= 0.68 and min(dspo_worst) >= 0.6, results
    assert np.mean(dpo_worst) <= 0.65, results
    assert np.mean(dspo_worst) >= np.mean(dpo_worst) + 0.1, results
