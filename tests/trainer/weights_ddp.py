"""One global batch of 8 DSPO records, the loss and gradient of a small model on it, computed three ways:
one batch of 8, 4 accumulated micro-batches of 2, and (run under `accelerate launch --num_processes 2
--cpu`) 2 processes of 4 with DDP over gloo. The real dataset reader gives the normalised weights and the
real `training_loss` the loss; only the network is a toy, so that the test takes seconds.

Run as a script (`accelerate launch --multi_gpu --num_processes 2`), it does the 2-process case and
writes {"loss", "grad"} as JSON to argv[2] (rank 0).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.data import PreferenceDataset, collate
from trainer.losses import training_loss

GLOBAL_BATCH = 8


def records(dataset: str | Path) -> PreferenceDataset:
    return PreferenceDataset(dataset, "train", (32,), loss="dspo", random_crops=False, flip=False)


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3).double()
    reference = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        model.weight.add_(0.1 * torch.randn(3, 3, dtype=torch.float64))
    return model, reference


def loss_of(model: torch.nn.Module, reference: torch.nn.Module, data: PreferenceDataset, idx: list[int]):
    batch = collate([data[(i, 0, 0)] for i in idx], [(i, 0, 0) for i in idx])
    images = torch.stack([batch.winner, batch.loser]).double()  # (2, B, 3, H, W)
    x = F.avg_pool2d(images.flatten(0, 1), 4).unflatten(0, (2, -1))
    pred = model(x.movedim(2, -1)).movedim(-1, 2)
    with torch.no_grad():
        ref_pred = reference(x.movedim(2, -1)).movedim(-1, 2)
    mask = F.interpolate(batch.mask, size=x.shape[-2:], mode="area")
    loss, _ = training_loss("dspo", pred, ref_pred, 0.5 * x, mask, batch.weight, beta=50.0)
    return loss


def grad(model: torch.nn.Module) -> list[float]:
    return [float(v) for p in model.parameters() for v in p.grad.flatten()]


def one_batch(dataset: str | Path) -> dict:
    data, (model, reference) = records(dataset), models()
    loss = loss_of(model, reference, data, list(range(GLOBAL_BATCH)))
    loss.backward()
    return {"loss": loss.item(), "grad": grad(model)}


def accumulated(dataset: str | Path, micro: int = 2) -> dict:
    data, (model, reference) = records(dataset), models()
    steps = GLOBAL_BATCH // micro
    total = 0.0
    for start in range(0, GLOBAL_BATCH, micro):
        loss = loss_of(model, reference, data, list(range(start, start + micro)))
        (loss / steps).backward()  # as the trainer does
        total += loss.item() / steps  # as the trainer logs it: the mean over micro-batches
    return {"loss": total, "grad": grad(model)}


def distributed(dataset: str | Path) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    data, (model, reference) = records(dataset), models()
    model = accelerator.prepare(model)
    # The trainer's split of a global batch: rank r takes records r, r + n, r + 2n, ... (BatchOrder).
    mine = list(range(GLOBAL_BATCH))[accelerator.process_index :: accelerator.num_processes]
    loss = loss_of(model, reference, data, mine)
    accelerator.backward(loss)
    mean = accelerator.reduce(loss.detach(), reduction="mean")
    return {
        "loss": float(mean),
        "grad": grad(accelerator.unwrap_model(model)),
        "processes": accelerator.num_processes,
        "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
        "is_main": accelerator.is_main_process,
    }


if __name__ == "__main__":
    result = distributed(sys.argv[1])
    if result.pop("is_main"):
        Path(sys.argv[2]).write_text(json.dumps(result))
    # Leave together: a process that exits while gloo's threads still serve the group aborts
    # ("terminate called without an active exception"), about one run in three on 2 cores.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
