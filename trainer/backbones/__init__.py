"""Backbones: one file per super-resolution architecture, all behind the small interface in `base.py`."""

from __future__ import annotations

from trainer.backbones.base import Backbone, Batch, StepInputs
from trainer.backbones.onestep import OneStepBackbone
from trainer.backbones.upscaler import UpscalerBackbone

BACKBONES: dict[str, type[Backbone]] = {"upscaler": UpscalerBackbone, "onestep": OneStepBackbone}


def load_backbone(name: str, model_dir: str, **kwargs) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](model_dir, **kwargs)


__all__ = ["BACKBONES", "Backbone", "Batch", "StepInputs", "load_backbone"]
