"""SAM (transformers' SamModel, from a local folder): automatic masks on the shared reference.

Automatic mode as in the SAM paper: a grid of points_per_side² single-point prompts over the image
(its image embedding is computed once), three masks per point, the best by predicted IoU kept if its
score reaches pred_iou_thresh and if it is stable: thresholding its logits at +offset and at -offset
gives nearly the same mask (their IoU reaches stability_score_thresh). Masks are then painted from the
best score down, each only where no better mask already is, so the regions do not overlap; a mask left
with under half its pixels is a duplicate and dropped. What no mask covers becomes one region of its
own, so the masks tile the image. Not done: the paper's extra crop layers for small objects.
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
        stability_score_thresh: float | None = 0.95,
        stability_score_offset: float = 1.0,
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
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset

    def _masks(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K, H, W) bool masks, their (K,) predicted IoU and (K,) stability, one per grid point."""
        import torch

        model, processor = _load(self.model, self.device)
        height, width = pixels.shape[:2]
        steps = (np.arange(self.points_per_side) + 0.5) / self.points_per_side
        points = [[float(x * width), float(y * height)] for y in steps for x in steps]
        image = Image.fromarray(pixels)
        inputs = processor(images=image, return_tensors="pt").to(self.device)
        offset = self.stability_score_offset
        masks, scores, stability = [], [], []
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
                iou = out.iou_scores[0].cpu()  # (points, 3)
                best = iou.argmax(dim=1)
                rows = torch.arange(len(batch))
                low_res = out.pred_masks[0].cpu()[rows, best]  # (points, h, w) logits of the best masks
                logits = processor.image_processor.post_process_masks(
                    low_res[None, :, None],
                    inputs["original_sizes"].cpu(),
                    inputs["reshaped_input_sizes"].cpu(),
                    binarize=False,
                )[0][:, 0]  # (points, H, W)
                strict = (logits > offset).flatten(1).sum(1)
                loose = (logits > -offset).flatten(1).sum(1).clamp(min=1)
                masks.append((logits > 0).numpy())
                scores.append(iou[rows, best].numpy())
                stability.append((strict / loose).numpy())
        return np.concatenate(masks), np.concatenate(scores), np.concatenate(stability)

    def segment(self, reference: Image.Image) -> list[np.ndarray]:
        pixels, size = _prepare(to_rgb(reference), self.max_side)
        masks, scores, stability = self._masks(pixels)
        labels = paint_regions(masks, scores, stability, self.pred_iou_thresh, self.stability_score_thresh)
        return labels_to_masks(_restore(labels, size))


def paint_regions(
    masks: np.ndarray,
    scores: np.ndarray,
    stability: np.ndarray,
    pred_iou_thresh: float | None,
    stability_score_thresh: float | None,
) -> np.ndarray:
    """A label image from candidate masks: the confident and stable ones painted from the best score
    down, each where no better one is; label 0 is what none covers."""
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    next_label = 1
    for index in np.argsort(-scores, kind="stable"):
        if pred_iou_thresh is not None and scores[index] < pred_iou_thresh:
            break
        if stability_score_thresh is not None and stability[index] < stability_score_thresh:
            continue
        free = masks[index] & (labels == 0)
        if free.sum() * 2 < max(masks[index].sum(), 1):
            continue  # mostly covered by better masks: a duplicate
        labels[free] = next_label
        next_label += 1
    return labels
