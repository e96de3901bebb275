"""Each loss against a direct float64 computation written from SPEC §3-4, on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import masked_error, preference_loss, training_loss

K, B, C, H, W = 2, 3, 4, 5, 6


def reference_error(pred, target, mask, k, b):
    num = sum(
        float(mask[b, 0, y, x]) * (float(target[k, b, c, y, x]) - float(pred[k, b, c, y, x])) ** 2
        for c in range(C)
        for y in range(H)
        for x in range(W)
    )
    return num / (C * float(mask[b].sum()))


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(K, B, C, H, W, generator=g)
    ref = torch.randn(K, B, C, H, W, generator=g)
    target = torch.randn(K, B, C, H, W, generator=g)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.5).float()
    mask[:, :, 0, 0] = 1  # never empty
    weight = torch.rand(B, generator=g) + 0.1
    return pred, ref, target, mask, weight


def test_masked_error(tensors) -> None:
    pred, _, target, mask, _ = tensors
    err = masked_error(pred, target, mask)
    for k in range(K):
        for b in range(B):
            assert float(err[k, b]) == pytest.approx(reference_error(pred, target, mask, k, b), rel=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dspo_loss(tensors, loss_type: str) -> None:
    pred, ref, target, mask, weight = tensors
    beta = 3.0
    loss, logits = preference_loss(
        masked_error(pred, target, mask), masked_error(ref, target, mask), weight, beta, loss_type
    )
    total, expected_logits = 0.0, []
    for b in range(B):
        e = {
            (who, k): reference_error(p, target, mask, k, b)
            for who, p in (("m", pred), ("r", ref))
            for k in (0, 1)
        }
        h = -((e["m", 0] - e["r", 0]) - (e["m", 1] - e["r", 1]))
        logit = beta * h
        expected_logits.append(logit)
        per = {
            "sigmoid": math.log1p(math.exp(-logit)),
            "hinge": max(0.0, 1 - logit),
            "ipo": (h - 1 / (2 * beta)) ** 2,
        }[loss_type]
        total += float(weight[b]) * per
    assert logits.tolist() == pytest.approx(expected_logits, rel=1e-5, abs=1e-6)
    # The weights arrive normalised by the training set's mean (SPEC §3): the loss is a plain mean.
    assert float(loss) == pytest.approx(total / B, rel=1e-5)


def test_dspo_with_one_full_mask_equals_image_level_dpo(tensors) -> None:
    pred, ref, target, _, weight = tensors
    full = torch.ones(B, 1, H, W)
    dspo, _ = training_loss("dspo", pred, ref, target, full, torch.ones(B), beta=2.0)
    dpo, _ = training_loss("dpo", pred, ref, target, full, torch.ones(B), beta=2.0)
    # Image-level DPO written directly: the mean over pixels, and the plain mean over records.
    err = lambda p: ((target.double() - p.double()) ** 2).mean(dim=(2, 3, 4))  # noqa: E731
    logits = -2.0 * ((err(pred)[0] - err(ref)[0]) - (err(pred)[1] - err(ref)[1]))
    expected = -torch.nn.functional.logsigmoid(logits).mean()
    assert float(dspo) == pytest.approx(float(expected), rel=1e-6)
    assert float(dpo) == float(dspo)


def test_sft_is_the_plain_diffusion_loss(tensors) -> None:
    pred, _, target, _, _ = tensors
    loss, _ = training_loss(
        "sft", pred[:1], None, target[:1], torch.ones(B, 1, H, W), torch.ones(B), beta=1.0
    )
    assert float(loss) == pytest.approx(
        float(((pred[0].double() - target[0].double()) ** 2).mean()), rel=1e-6
    )


def test_one_step_surrogate_with_regulariser(tensors) -> None:
    # One prediction per record, compared with both the winner's and the loser's latents.
    _, _, target, mask, weight = tensors
    g = torch.Generator().manual_seed(1)
    pred, ref = torch.randn(1, B, C, H, W, generator=g), torch.randn(1, B, C, H, W, generator=g)
    beta, reg_weight = 0.5, 0.3
    for reg in ("sft", "ref"):
        loss, metrics = training_loss(
            "dspo", pred, ref, target, mask, weight, beta, reg=reg, reg_weight=reg_weight
        )
        total = 0.0
        for b in range(B):
            e = {
                (who, k): reference_error(p.expand(2, -1, -1, -1, -1), target, mask, k, b)
                for who, p in (("m", pred), ("r", ref))
                for k in (0, 1)
            }
            logit = -beta * ((e["m", 0] - e["r", 0]) - (e["m", 1] - e["r", 1]))
            total += float(weight[b]) * math.log1p(math.exp(-logit))
        # The regulariser: the masked error to the anchor, weighted like the preference term.
        anchor = target[:1] if reg == "sft" else ref
        expected_reg = sum(float(weight[b]) * reference_error(pred, anchor, mask, 0, b) for b in range(B)) / B
        assert float(metrics["regulariser"]) == pytest.approx(expected_reg, rel=1e-6)
        assert float(loss) == pytest.approx(total / B + reg_weight * expected_reg, rel=1e-5)


def test_accuracy_and_margin_metrics(tensors) -> None:
    pred, ref, target, mask, weight = tensors
    _, metrics = training_loss("dspo", pred, ref, target, mask, weight, beta=4.0)
    _, logits = preference_loss(
        masked_error(pred, target, mask), masked_error(ref, target, mask), weight, 4.0
    )
    assert float(metrics["accuracy"]) == pytest.approx(float((logits > 0).float().mean()))
    assert float(metrics["reward_margin"]) == pytest.approx(float(logits.mean()))
