"""The losses of SPEC §3-4: DSPO, image-level Diffusion-DPO, SFT, and the one-step surrogate's regulariser.

Every loss starts from the masked per-image error e = sum(s * (target - pred)^2) / (C * sum(s)). DSPO uses
the instance mask and weight, image-level DPO a full mask and weight 1: one function serves both, which is
why DSPO costs no more than DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo")
REGULARISERS = ("sft", "ref")


def masked_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image masked mean squared error, (K, B).

    target is (K, B, C, h, w), pred broadcastable to it, mask (B, 1, h, w).
    """
    # float64: the preference signal is a difference of differences of these sums, which float32 sums of
    # large errors (one-step surrogates) round away. The cost is elementwise and small next to the UNet.
    squared = (target.double() - pred.double()).square()
    channels = target.shape[-3]
    # A crop whose mask is empty at latent resolution gives e = 0 for both images: no signal, and no NaN.
    area = mask.double().sum(dim=(-3, -2, -1)).clamp_min(1e-8)
    return (squared * mask).sum(dim=(-3, -2, -1)) / (channels * area)


def preference_logits(model_err: torch.Tensor, ref_err: torch.Tensor, beta: float) -> torch.Tensor:
    """logit = -beta * [(e_w - e_ref_w) - (e_l - e_ref_l)] for errors shaped (2, B)."""
    return -beta * ((model_err[0] - ref_err[0]) - (model_err[1] - ref_err[1]))


def preference_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted DPO loss over records and its logits; sigmoid is DPO's, hinge and IPO are alternatives.

    `weight` is already w / w_bar, w_bar the mean weight over the training set (SPEC §3), so the loss is a
    plain mean over records: the same for one batch, for accumulated micro-batches and across processes.
    """
    logits = preference_logits(model_err, ref_err, beta)
    if loss_type == "sigmoid":
        per_record = -F.logsigmoid(logits)
    elif loss_type == "hinge":
        per_record = torch.relu(1 - logits)
    elif loss_type == "ipo":
        # IPO regresses the unscaled log-ratio difference to 1 / (2 beta).
        per_record = (logits / beta - 1 / (2 * beta)).square()
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose from {LOSS_TYPES}")
    return (weight * per_record).mean(), logits


def regulariser(
    pred: torch.Tensor,
    ref_pred: torch.Tensor | None,
    target: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """The one-step surrogate's anchor (SPEC §4): masked MSE to the winner ("sft") or to the reference
    ("ref"), weighted like the preference term. Restricted to the mask because the record judged that region
    only: outside it the winner was not preferred, and pulling the whole crop toward it would train
    preferences nobody voted for."""
    if kind == "sft":
        anchor = target[:1]
    elif kind == "ref":
        if ref_pred is None:
            raise ValueError("the ref regulariser needs the reference model's predictions")
        anchor = ref_pred[:1]
    else:
        raise ValueError(f"unknown regulariser {kind!r}; choose from {REGULARISERS}")
    return (weight * masked_error(pred[:1], anchor, mask)[0]).mean()


def training_loss(
    loss: str,
    pred: torch.Tensor,
    ref_pred: torch.Tensor | None,
    target: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    reg: str = "sft",
    reg_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one step and its metrics (detached).

    `loss` is "dspo" or "dpo" (the caller gives the instance or the full mask) or "sft"; `reg_weight` > 0 adds
    the one-step regulariser.
    """
    model_err = masked_error(pred, target, mask)
    if loss == "sft":
        value = model_err[0].mean()
        metrics = {"model_err_w": model_err[0].mean()}
    elif loss in ("dspo", "dpo"):
        if ref_pred is None:
            raise ValueError(f"{loss} needs the reference model's predictions")
        ref_err = masked_error(ref_pred, target, mask)
        value, logits = preference_loss(model_err, ref_err, weight, beta, loss_type)
        metrics = {
            "accuracy": (logits > 0).float().mean(),
            "reward_margin": logits.mean(),
            "model_err_w": model_err[0].mean(),
            "model_err_l": model_err[1].mean(),
            "ref_err_w": ref_err[0].mean(),
            "ref_err_l": ref_err[1].mean(),
        }
    else:
        raise ValueError(f"unknown loss {loss!r}; choose from dspo, dpo, sft")
    if reg_weight:
        reg_value = regulariser(pred, ref_pred, target, mask, weight, reg)
        value = value + reg_weight * reg_value
        metrics["regulariser"] = reg_value
    metrics["loss"] = value
    return value, {k: v.detach() for k, v in metrics.items()}
