"""The DSPO training loop, top to bottom: data, model, reference, optimizer, steps, checkpoints, export."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from dspo.dataset_format import locate_dataset, verify_dataset
from trainer.backbones import Backbone, Batch, load_backbone
from trainer.backbones.base import Nets
from trainer.config import TrainConfig
from trainer.data import BatchOrder, PreferenceDataset, fixed_batches, training_batches
from trainer.losses import masked_error, preference_loss, training_loss
from trainer.model_card import write_model_card

# Dense bf16 peak of the GPUs whose MFU we report without being told (TFLOP/s).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


class Reference:
    """The frozen starting model, the one place that knows what "reference" means.

    With LoRA it is the trained network itself with its adapters disabled, so no second copy is held; with
    full fine-tuning it is a frozen copy taken before the first step (and before a resume loads weights).
    """

    def __init__(self, backbone: Backbone, trainable: Nets, lora: bool, dtype: torch.dtype) -> None:
        self.lora = lora
        if lora:
            copies = trainable
            # Toggling the LoRA layers found once is several times cheaper than the model-level
            # disable_adapters(), which walks every module twice per step.
            self.layers = [
                m for net in trainable.values() for m in net.modules() if isinstance(m, BaseTunerLayer)
            ]
        else:
            copies = {n: copy.deepcopy(m).requires_grad_(False).to(dtype) for n, m in trainable.items()}
        self.nets: Nets = {**backbone.modules(), **copies}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if not self.lora:
            yield
            return
        for layer in self.layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.enable_adapters(True)


def step_generator(device: torch.device, *key: int) -> torch.Generator:
    # Noise and timesteps are a pure function of (seed, step, micro-batch, rank): a resumed run draws exactly
    # what the uninterrupted one would, with no RNG state to save.
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(seed)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type != "cuda" or cfg.mixed_precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def add_lora(backbone: Backbone, cfg: TrainConfig) -> Nets:
    trainable = {}
    for name, targets in backbone.lora_targets.items():
        net = getattr(backbone.pipe, name)
        net.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=targets,
            )
        )
        # Adapter weights train in float32 even when the frozen base runs in bf16/fp16.
        for p in net.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        trainable[name] = net
    return trainable


def trainable_state(trainable: Nets) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: p.detach().cpu().clone() for k, p in net.named_parameters() if p.requires_grad}
        for name, net in trainable.items()
    }


def load_trainable_state(trainable: Nets, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, net in trainable.items():
        params = dict(net.named_parameters())
        for key, value in state[name].items():
            params[key].data.copy_(value)


CHECKPOINT_FILE, CHECKSUM_FILE = "state.pt", "state.pt.sha256"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: Path, state: dict) -> None:
    """Write the state and its sha256 into a temporary folder, then rename it into place: a crash leaves
    either no `step-K` or a complete one, and resume checks the checksum all the same."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / CHECKPOINT_FILE)
    (tmp / CHECKSUM_FILE).write_text(_sha256(tmp / CHECKPOINT_FILE) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when its state matches its checksum."""
    state, checksum = folder / CHECKPOINT_FILE, folder / CHECKSUM_FILE
    if not state.is_file() or not checksum.is_file():
        return f"{folder} has no {CHECKPOINT_FILE} with its {CHECKSUM_FILE}"
    if _sha256(state) != checksum.read_text().strip():
        return f"{folder}/{CHECKPOINT_FILE} does not match its checksum (truncated or changed)"
    return None


def find_checkpoint(cfg: TrainConfig) -> Path:
    """The checkpoint to resume: the given folder (which must be intact), or the newest intact one."""
    if cfg.resume != "latest":
        folder = Path(cfg.resume)
        problem = checkpoint_problem(folder)
        if problem:
            raise ValueError(f"cannot resume: {problem}")
        return folder
    found = sorted(
        (p for p in (Path(cfg.output_dir) / "checkpoints").glob("step-*") if p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for folder in reversed(found):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        print(f"skipping checkpoint: {problem}", file=sys.stderr)
    raise FileNotFoundError(f"no intact checkpoint to resume in {cfg.output_dir}/checkpoints")


def optimizer_step(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    max_grad_norm: float,
    bad: bool,
) -> bool:
    """Clip, step and clear the gradients; False when the step was skipped.

    A step is skipped when the loss was not finite on some process (`bad`: nothing was back-propagated for
    that micro-batch, so the gradients are not the step's) or the gradient is not finite. With fp16 the
    GradScaler decides the latter: `optimizer.step()` is always called after clipping (which unscaled the
    gradients), so the scaler skips the update and lowers its scale as accelerate intends; skipping the call
    instead would leave the scaler mid-step, and the next clip would fail ("unscale_() has already been
    called on this optimizer since the last update()").
    """
    stepped = False
    if not bad:
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm or math.inf)
        if accelerator.scaler is not None:
            optimizer.step()
            stepped = not accelerator.optimizer_step_was_skipped
        elif torch.isfinite(torch.as_tensor(grad_norm)):
            optimizer.step()
            stepped = True
        if stepped:
            lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped


def expected_cost(cfg: TrainConfig, device: torch.device, first_step_s: float, done: int) -> str:
    """What the run will cost, from its first step's time: said when one step of many is spent."""
    left = (cfg.max_steps - done) * first_step_s
    line = (
        f"device {device}: the first step took {first_step_s:.2g} s (warm-up included); the "
        f"{cfg.max_steps - done} steps left will take about {left / 3600:.2g} h"
    )
    if device.type == "cpu":
        line += ". On a CPU see the CPU recipe in docs/trainer.md (small crops and batches, few steps)"
    return line


def validate(
    cfg: TrainConfig,
    backbone: Backbone,
    model_nets: Nets,
    reference: Reference,
    val_sets: dict[str, PreferenceDataset],
    accelerator: Accelerator,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Held-out preference metrics per record kind, with fixed noise: comparable across runs and losses.

    `val_instance_*` are measured on the instance records under their masks (what DSPO optimises),
    `val_image_*` on the image-level records as whole images (what image-level DPO optimises).
    """
    metrics = {}
    for kind, dataset in val_sets.items():
        logits, losses = [], []
        for b, batch in enumerate(fixed_batches(dataset, cfg.batch_size)):
            batch = batch.to(accelerator.device, dtype)
            for r in range(cfg.val_repeats):
                generator = step_generator(accelerator.device, cfg.seed, 1, b, r)
                with torch.no_grad(), accelerator.autocast():
                    with reference.active():
                        inputs = backbone.prepare(batch, reference.nets, generator, losers=True)
                        ref_pred = backbone.predict(reference.nets, inputs)
                    pred = backbone.predict(model_nets, inputs)
                    model_err = masked_error(pred, inputs.target, inputs.mask)
                    ref_err = masked_error(ref_pred, inputs.target, inputs.mask)
                    loss, batch_logits = preference_loss(
                        model_err, ref_err, batch.weight, cfg.beta, cfg.loss_type
                    )
                logits.append(batch_logits)
                losses.append(loss * len(batch_logits))
        if not logits:
            continue
        all_logits = torch.cat(logits).float()
        metrics[f"val_{kind}_accuracy"] = (all_logits > 0).float().mean().item()
        metrics[f"val_{kind}_reward_margin"] = all_logits.mean().item()
        metrics[f"val_{kind}_loss"] = (torch.stack(losses).sum() / len(all_logits)).item()
    return metrics


def validation_sets(cfg: TrainConfig, sizes: tuple[int, ...], manifest: dict) -> dict[str, PreferenceDataset]:
    """The val split by record kind: the instance records with their masks, and the image-level records
    whole (when the dataset has any), whatever the training loss."""
    common = dict(random_crops=False, manifest=manifest)
    instance = PreferenceDataset(
        cfg.dataset,
        "val",
        sizes,
        loss="dspo",
        text_feedback=cfg.text_feedback and cfg.loss == "dspo",
        **common,
    )
    image = PreferenceDataset(cfg.dataset, "val", sizes, loss="dpo", **common)
    sets = {"instance": instance, "image": image}
    return {kind: data for kind, data in sets.items() if data.counts()[kind]}


@dataclasses.dataclass
class TrainResult:
    metrics: dict[str, float]
    pipeline: DiffusionPipeline  # the backbone's pipeline with the trained weights (adapters attached)


def train(cfg: TrainConfig) -> TrainResult:
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    device, main = accelerator.device, accelerator.is_main_process
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # LoRA initialisation

    # Data first: a broken dataset stops here, before any model is loaded. A downloaded tar is unpacked
    # into the run folder (by the main process; the others wait and read it there).
    unpacked = out / "dataset"
    if main:
        dataset = locate_dataset(cfg.dataset, unpacked)
    accelerator.wait_for_everyone()
    if not main:
        dataset = locate_dataset(unpacked if Path(cfg.dataset).is_file() else cfg.dataset, unpacked)
    cfg = dataclasses.replace(cfg, dataset=str(dataset))
    manifest = verify_dataset(cfg.dataset)
    sizes = (cfg.resolution, *cfg.buckets)
    train_set = PreferenceDataset(
        cfg.dataset,
        "train",
        sizes,
        loss=cfg.loss,
        text_feedback=cfg.text_feedback,
        image_level_weight=cfg.image_level_weight,
        flip=cfg.flip,
        seed=cfg.seed,
        manifest=manifest,
    )
    if not len(train_set):
        raise ValueError(f"{cfg.dataset} has no train records for loss {cfg.loss} ({train_set.view})")
    val_sets = validation_sets(cfg, sizes, manifest)
    records = {
        "trained_on": train_set.view,
        "train": train_set.counts(),
        "val": {kind: data.counts()[kind] for kind, data in val_sets.items()},
    }
    if not val_sets and main:
        warnings.warn(
            f"{cfg.dataset} has no val records: this run reports no held-out metrics. Build the dataset "
            "with a val fraction above 0 (and enough sources) to get them.",
            stacklevel=2,
        )

    # Model.
    extra = (
        {"noise_level": cfg.noise_level}
        if cfg.backbone == "upscaler"
        else {"lora_vae_encoder": cfg.lora_vae_encoder}
    )
    if cfg.lora_vae_encoder and accelerator.num_processes > 1:
        # The one-step generator calls vae.encode, which a DDP wrapper does not expose.
        raise ValueError("lora_vae_encoder runs on one process only")
    backbone = load_backbone(cfg.backbone, cfg.model, dtype=dtype, **extra).to(device)
    val_records = [r for data in val_sets.values() for r in data.records]
    for scale in {r.scale for r in train_set.records + val_records}:
        backbone.check_scale(scale)
        multiple = backbone.size_multiple(scale)
        if any(s % multiple for s in sizes):
            raise ValueError(f"crop sizes {sizes} must be multiples of {multiple} for scale {scale}")
    if cfg.lora_rank:
        trainable = add_lora(backbone, cfg)
        reference = Reference(backbone, trainable, lora=True, dtype=dtype)
    else:
        trainable = {name: getattr(backbone.pipe, name) for name in backbone.lora_targets}
        reference = Reference(backbone, trainable, lora=False, dtype=dtype)
        for net in trainable.values():
            net.float().requires_grad_(True).train()
    params = [p for net in trainable.values() for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.lr_warmup_steps)

    step, cursor, skipped = 0, (0, 0), 0
    if cfg.resume:
        checkpoint = find_checkpoint(cfg)
        state = torch.load(checkpoint / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        load_trainable_state(trainable, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        step, cursor, skipped = state["step"], tuple(state["cursor"]), state["skipped"]

    wrapped = accelerator.prepare(*trainable.values())
    wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
    model_nets: Nets = {**backbone.modules(), **dict(zip(trainable, wrapped, strict=True))}
    optimizer = accelerator.prepare(optimizer)

    order = BatchOrder(
        train_set,
        cfg.batch_size,
        cfg.seed,
        accelerator.num_processes,
        accelerator.process_index,
        start=cursor,
    )
    batches = training_batches(train_set, order, cfg.num_workers)
    pairs = cfg.loss != "sft"
    needs_ref = pairs or (cfg.uses_regulariser and cfg.reg == "ref")
    records_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    images_per_step = records_per_step * (2 if pairs else 1)
    peak = peak_flops(cfg, device)
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "logs"))
        print(
            f"training {cfg.backbone} with {cfg.loss} on {train_set.view} "
            f"({manifest['dataset_id']} v{manifest['version']}; val: "
            f"{', '.join(f'{n} {k}' for k, n in records['val'].items()) or 'none'}), "
            f"{sum(p.numel() for p in params):,} trainable parameters, {images_per_step} images per step, "
            f"on {device} ({cfg.mixed_precision} mixed precision)"
        )

    def forward_backward(
        batch: Batch, generator: torch.Generator, sync: bool
    ) -> dict[str, torch.Tensor] | None:
        """One micro-batch: reference and inputs without gradients, then the model, the loss and backward.

        Returns the metrics, or None when the loss was not finite on some process (then nothing is done).
        """
        with accelerator.autocast():
            with torch.no_grad(), reference.active():
                inputs = backbone.prepare(batch, reference.nets, generator, losers=pairs)
                ref_pred = backbone.predict(reference.nets, inputs) if needs_ref else None
            pred = backbone.predict(model_nets, inputs)
            loss, metrics = training_loss(
                cfg.loss,
                pred,
                ref_pred,
                inputs.target,
                inputs.mask,
                batch.weight,
                cfg.beta,
                cfg.loss_type,
                cfg.reg,
                cfg.reg_weight if cfg.uses_regulariser else 0.0,
            )
        # Every process must agree to skip, or the others would wait forever in backward's all-reduce.
        finite = accelerator.reduce(torch.isfinite(loss.detach()).float(), reduction="sum")
        if finite.item() < accelerator.num_processes:
            return None
        with contextlib.ExitStack() as stack:
            if not sync:
                for net in wrapped:
                    stack.enter_context(accelerator.no_sync(net))
            accelerator.backward(loss / cfg.gradient_accumulation_steps)
        return metrics

    # FLOPs per step, counted once on a throw-away pass over the first batch: counting changes how some ops
    # dispatch, so no step that trains is ever run under the counter (resumed runs stay bit-exact).
    first = next(batches).to(device, dtype)
    with FlopCounterMode(display=False) as counter:
        forward_backward(first, step_generator(device, cfg.seed, 2, accelerator.process_index), sync=True)
    optimizer.zero_grad(set_to_none=True)
    flops_per_step = (
        float(counter.get_total_flops()) * cfg.gradient_accumulation_steps * accelerator.num_processes
    )
    batches = itertools.chain([first], batches)
    if cfg.compile:
        for net in trainable.values():
            net.compile()

    history = open(out / "metrics.jsonl", "a" if cfg.resume else "w") if main else None
    progress = tqdm(total=cfg.max_steps, initial=step, disable=not (main and cfg.progress), desc="train")
    warming_up = True  # the first step of a run (allocations, compilation) is left out of throughput
    window_start, window_steps, window_metrics = time.perf_counter(), 0, []
    last: dict[str, float] = {}

    while step < cfg.max_steps:
        step_started = time.perf_counter()
        step_metrics, bad = [], False
        for micro in range(cfg.gradient_accumulation_steps):
            batch: Batch = next(batches).to(device, dtype)
            cursor = batch.cursor
            generator = step_generator(device, cfg.seed, 0, step, micro, accelerator.process_index)
            metrics = forward_backward(batch, generator, sync=micro == cfg.gradient_accumulation_steps - 1)
            if metrics is None:
                bad = True
            else:
                step_metrics.append(metrics)
        if not optimizer_step(accelerator, optimizer, lr_scheduler, params, cfg.max_grad_norm, bad):
            skipped += 1
        step += 1
        progress.update(1)
        if warming_up:
            warming_up = False
            if main:
                print(expected_cost(cfg, device, time.perf_counter() - step_started, step), flush=True)
            window_start, window_steps, window_metrics = time.perf_counter(), 0, []
        else:
            window_steps += 1
            window_metrics += step_metrics

        # Validation has its own schedule; its metrics join the step's log line, or make one of their own.
        val_metrics = {}
        if cfg.val_every and step % cfg.val_every == 0 and step < cfg.max_steps and val_sets:
            val_metrics = validate(cfg, backbone, model_nets, reference, val_sets, accelerator, dtype)
        if not (step % cfg.log_every == 0 or step == cfg.max_steps) and val_metrics and main:
            for key, value in val_metrics.items():
                writer.add_scalar(f"train/{key}", value, step)
            history.write(json.dumps({"step": step, **val_metrics}) + "\n")
            history.flush()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - window_start
            logged = {
                "step": step,
                "lr": lr_scheduler.get_last_lr()[0],
                "skipped_steps": skipped,
                "beta": cfg.beta,
                "peak_memory_mib": peak_memory_mib(device),
            }
            recent = window_metrics or step_metrics
            for key in recent[0] if recent else []:
                value = torch.stack([m[key].float() for m in recent]).mean()
                logged[key] = accelerator.reduce(value, reduction="mean").item()
            if window_steps:
                logged["seconds_per_step"] = elapsed / window_steps
                logged["images_per_s"] = images_per_step * window_steps / elapsed
                if pairs:
                    logged["pairs_per_s"] = records_per_step * window_steps / elapsed
                logged["tflops_per_s"] = flops_per_step * window_steps / elapsed / 1e12
                if peak:
                    logged["mfu"] = (
                        flops_per_step * window_steps / elapsed / (peak * accelerator.num_processes)
                    )
            logged.update(val_metrics)
            if main:
                for key, value in logged.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}", value, step)
                history.write(json.dumps(logged) + "\n")
                history.flush()
                progress.set_postfix(
                    {k: f"{logged[k]:.4g}" for k in ("loss", "accuracy", "images_per_s") if k in logged}
                )
            last = logged
            window_start, window_steps, window_metrics = time.perf_counter(), 0, []

        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(
                    out / "checkpoints" / f"step-{step}",
                    {
                        "step": step,
                        "cursor": list(cursor),
                        "skipped": skipped,
                        "trainable": trainable_state(trainable),
                        "optimizer": optimizer.state_dict(),
                        "lr_scheduler": lr_scheduler.state_dict(),
                        "config": cfg.to_dict(),
                    },
                )
    progress.close()

    final = dict(last)
    final.update(validate(cfg, backbone, model_nets, reference, val_sets, accelerator, dtype))
    accelerator.wait_for_everyone()
    if main:
        save_weights(backbone, trainable, cfg, out)
        final["flops_per_step"] = flops_per_step
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        (out / "training_config.json").write_text(json.dumps({**cfg.to_dict(), "records": records}, indent=2))
        write_model_card(out, cfg, manifest, final, records)
        writer.close()
        history.close()
    accelerator.end_training()
    for net in trainable.values():
        net.eval()
    return TrainResult(metrics=final, pipeline=backbone.pipe)


def save_weights(backbone: Backbone, trainable: Nets, cfg: TrainConfig, out: Path) -> None:
    """LoRA in the diffusers format (its pipeline loads it with load_lora_weights), or the full nets."""
    if not cfg.lora_rank:
        for name, net in trainable.items():
            net.save_pretrained(out / name)
        return
    kwargs = {}
    for name, net in trainable.items():
        layers = get_peft_model_state_dict(net)
        # The UNet loader expects diffusers' key names; other modules load peft's through load_lora_adapter,
        # which does not translate diffusers' old attention names (to_q.lora.down) back.
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(layers) if name == "unet" else layers
        kwargs[f"{name}_lora_adapter_metadata"] = net.peft_config["default"].to_dict()
    backbone.pipeline_class.save_lora_weights(str(out), **kwargs)
