"""SAM (transformers' SamModel, from a local folder): automatic masks on the shared reference.

Automatic mode as in the SAM paper: a grid of points_per_side² single-point prompts over the image
(its image embedding is computed once), three masks per point, the best by predicted IoU kept if its
score reaches pred_iou_thresh. Masks are then painted from the best score down, each only where no
better mask already is, so the regions do not overlap; a mask left with under half its pixels is a
duplicate and dropped. What no mask covers becomes one region of its own, so the masks tile the image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dspo.images import to_rgb
from worker.segmenters.base import labels_to_masks
from worker.segmenters.classical import _check_max_side, _prepare, _restore


@lru_cache(maxsize=1)
def _load(model: str, device: str) -> tuple[Any, Any]:
    from transformers import SamModel, SamProcessor

    return SamModel.from_pretrained(model).to(device).eval(), SamProcessor.from_pretrained(model)


class SamSegmenter:
    name = "sam"

    def __init__(
        self,
        model: str,
        points_per_side: int = 16,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = 0.88,
        max_side: int | None = 1024,
        device: str = "cpu",
    ) -> None:
        if not Path(model).is_dir():
            raise ValueError(f"model {model!r} is not a local folder with a SamModel and its processor")
        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be positive")
        _check_max_side(max_side)
        self.model, self.points_per_side, self.points_per_batch = model, points_per_side, points_per_batch
        self.pred_iou_thresh, self.max_side, self.device = pred_iou_thresh, max_side, device

    def _masks(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) bool masks and their (K,) predicted IoU, one per grid point."""
        import torch

        model, processor = _load(self.model, self.device)
        height, width = pixels.shape[:2]
        steps = (np.arange(self.points_per_side) + 0.5) / self.points_per_side
        points = [[float(x * width), float(y * height)] for y in steps for x in steps]
        image = Image.fromarray(pixels)
        inputs = processor(images=image, return_tensors="pt").to(self.device)
        masks, scores = [], []
        with torch.no_grad():
            embeddings = model.get_image_embeddings(inputs["pixel_values"])
            for start in range(0, len(points), self.points_per_batch):
                batch = points[start : start + self.points_per_batch]
                prompt = processor(images=image, input_points=[[[p] for p in batch]], return_tensors="pt")
                out = model(
                    image_embeddings=embeddings,
                    input_points=prompt["input_points"].to(self.device),
                    multimask_output=True,
                )
                full = processor.image_processor.post_process_masks(
                    out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
                )[0]  # (points, 3, H, W) bool
                iou = out.iou_scores[0].cpu()  # (points, 3)
                best = iou.argmax(dim=1)
                masks.append(full[torch.arange(len(batch)), best].numpy())
                scores.append(iou[torch.arange(len(batch)), best].numpy())
        return np.concatenate(masks), np.concatenate(scores)

    def segment(self, reference: Image.Image) -> list[np.ndarray]:
        pixels, size = _prepare(to_rgb(reference), self.max_side)
        masks, scores = self._masks(pixels)
        labels = np.zeros(pixels.shape[:2], dtype=np.int32)  # 0: no mask yet
        next_label = 1
        for index in np.argsort(-scores, kind="stable"):
            if self.pred_iou_thresh is not None and scores[index] < self.pred_iou_thresh:
                break
            free = masks[index] & (labels == 0)
            if free.sum() * 2 < max(masks[index].sum(), 1):
                continue  # mostly covered by better masks: a duplicate
            labels[free] = next_label
            next_label += 1
        return labels_to_masks(_restore(labels, size))
