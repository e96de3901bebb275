"""Cost of a DSPO step against its floor, SFT and image-level DPO: one run, one model, one data set.

    python bench/trainer.py                # CPU: tiny random upscaler, 64 px crops
    python bench/trainer.py --gpu          # GPU: SD-2.1-sized random upscaler in bf16, 512 px crops
    python bench/trainer.py --gpu --dry-run  # the same script on the CPU, tiny crops: does it run?

Every loss runs through the real trainer (`trainer.train.train`) on the same synthetic dataset; each is
repeated and the median seconds per step kept, because timings on shared machines wander. The floor of a
DSPO step with B pairs is an SFT step on 2B images plus one no-grad UNet forward of those 2B images (the
reference). With --gpu (also runnable on the CPU with --baseline) the script also times a loop written the
way the diffusers Diffusion-DPO example is (eager, adapters toggled for the reference, no masks), with its
pairs/s, peak memory and MFU, FLOPs counted once with torch.utils.flop_counter.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# This file is named trainer.py, so when run as a script its own folder would shadow the trainer package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from dspo.dataset_format import DatasetWriter, Record  # noqa: E402
from trainer.backbones import load_backbone  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import PreferenceDataset, collate  # noqa: E402
from trainer.tiny import (  # noqa: E402
    UPSCALER_SCALING_FACTOR,
    make_tiny_model,
    upscaler_schedulers,
    write_tiny_tokenizer,
)
from trainer.train import PEAK_BF16_TFLOPS, Reference, add_lora, train  # noqa: E402


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_bench_dataset(root: Path, records: int, size: int, scale: int = 4, seed: int = 0) -> Path:
    """Random smooth images; the loser carries noise inside a random box covering a quarter of the image."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root)
    yy, xx = np.mgrid[0:size, 0:size]
    for r in range(records):
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        clean = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
        lq = np.asarray(Image.fromarray(clean).resize((size // scale, size // scale), Image.BICUBIC))
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        box = (x0, y0, x0 + size // 2, y0 + size // 2)
        inside = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
        noise = rng.integers(-60, 61, clean.shape)
        loser = np.where(inside[..., None], clean + noise, clean).clip(0, 255).astype(np.uint8)
        writer.add_record(
            Record(
                record_id=f"r{r}",
                source_id=f"s{r}",
                instance_id=f"i{r}",
                split="train",
                lq=writer.add_image(_png(lq)),
                winner=writer.add_image(_png(clean)),
                loser=writer.add_image(_png(loser)),
                box=box,
                mask=writer.add_image(_png((inside * 255).astype(np.uint8), "1")),
                weight=1.0,
                prompt="a photo",
                content_text="a smooth surface",
                scale=scale,
            )
        )
    return writer.finish({"dataset_id": "bench", "version": 1})


def make_sd21_sized_upscaler(folder: Path) -> Path:
    """The x4-upscaler architecture at Stable Diffusion 2.1's widths, random weights (no download here)."""
    from diffusers import AutoencoderKL, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_tiny_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=2,
        scaling_factor=UPSCALER_SCALING_FACTOR,
    )
    unet = UNet2DConditionModel(
        in_channels=7,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        num_class_embeds=1000,
    )
    StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        **upscaler_schedulers(),
    ).save_pretrained(folder)
    return folder


def time_trainer(
    base: TrainConfig, loss: str, batch_size: int, steps: int, out: Path
) -> tuple[list[float], dict]:
    """Seconds of each step after the first (logged one by one, so a busy moment spoils one sample only)."""
    cfg = TrainConfig(
        **{
            **base.to_dict(),
            "loss": loss,
            "batch_size": batch_size,
            "max_steps": steps + 1,
            "log_every": 1,
            "output_dir": str(out),
        }
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = train(cfg).metrics
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [h["seconds_per_step"] for h in history if "seconds_per_step" in h], metrics


def time_reference_forward(base: TrainConfig, images: int, steps: int) -> list[float]:
    """Seconds of no-grad UNet forwards of `images` images: the reference pass a DSPO step adds, run as the
    trainer runs it (`trainer.train.Reference`: the LoRA network with its adapters disabled)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if base.mixed_precision == "bf16" else torch.float32
    backbone = load_backbone(base.backbone, base.model, dtype=dtype).to(device)
    reference = Reference(backbone, add_lora(backbone, base), lora=True, dtype=dtype)
    data = PreferenceDataset(base.dataset, "train", (base.resolution,))
    keys = [(i, 0, 0) for i in range(images // 2)]
    batch = collate([data[k] for k in keys], keys).to(device, dtype)
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        with reference.active():
            inputs = backbone.prepare(
                batch, reference.nets, torch.Generator(device).manual_seed(0), losers=True
            )
        for i in range(steps + 1):
            start = time.perf_counter()
            with reference.active():  # toggling the adapters is part of the pass's cost
                backbone.predict(reference.nets, inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call allocates and warms up
                times.append(time.perf_counter() - start)
    return times


def time_baseline(base: TrainConfig, pairs: int, steps: int) -> dict:
    """A Diffusion-DPO step as the diffusers example writes it: eager, full-image errors, adapters toggled."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    accelerator = Accelerator(mixed_precision=base.mixed_precision)
    device = accelerator.device
    dtype = torch.bfloat16 if base.mixed_precision == "bf16" else torch.float32
    pipe = StableDiffusionUpscalePipeline.from_pretrained(base.model, dtype=dtype).to(device)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=base.lora_rank,
            lora_alpha=base.lora_rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=base.learning_rate)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    data = PreferenceDataset(base.dataset, "train", (base.resolution,), loss="dpo")
    keys = [(i, 0, 0) for i in range(pairs)]
    batch = collate([data[k] for k in keys], keys).to(device, dtype)
    ids = pipe.tokenizer(
        batch.text,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)

    def step() -> None:
        with torch.no_grad():
            latents = vae.encode(torch.cat([batch.winner, batch.loser])).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents[:pairs]).repeat(2, 1, 1, 1)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (pairs,), device=device).repeat(2)
            noisy = scheduler.add_noise(latents, noise, t)
            level = torch.full((2 * pairs,), base.noise_level, device=device)
            lq = pipe.low_res_scheduler.add_noise(batch.lq, torch.randn_like(batch.lq), level[:pairs]).repeat(
                2, 1, 1, 1
            )
            hidden = text_encoder(ids)[0].repeat(2, 1, 1)
            target = scheduler.get_velocity(latents, noise, t)
        sample = torch.cat([noisy, lq], dim=1)
        with accelerator.autocast():
            pred = unet(sample, t, hidden, class_labels=level).sample
            model_losses = (pred.float() - target.float()).pow(2).mean(dim=[1, 2, 3])
            model_diff = model_losses[:pairs] - model_losses[pairs:]
            with torch.no_grad():
                accelerator.unwrap_model(unet).disable_adapters()
                ref_pred = unet(sample, t, hidden, class_labels=level).sample
                accelerator.unwrap_model(unet).enable_adapters()
                ref_losses = (ref_pred.float() - target.float()).pow(2).mean(dim=[1, 2, 3])
                ref_diff = ref_losses[:pairs] - ref_losses[pairs:]
            loss = -F.logsigmoid(-0.5 * base.beta * (model_diff - ref_diff)).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = float(counter.get_total_flops())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    step()  # warm-up outside the counter
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    result = {
        "seconds_per_step": seconds,
        "pairs_per_s": pairs / seconds,
        "images_per_s": 2 * pairs / seconds,
        "tflops_per_s": flops / seconds / 1e12,
    }
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name()
        peak = next((tf for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)
        if peak and base.mixed_precision == "bf16":
            result["mfu"] = flops / seconds / (peak * 1e12)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gpu", action="store_true", help="SD-2.1-sized model in bf16 on the GPU, with baseline"
    )
    parser.add_argument("--baseline", action="store_true", help="also time the Diffusion-DPO-example loop")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --gpu: the GPU configuration on whatever device is here, 1 pair of 32 px crops, 2 steps, "
        "to check that the script runs end to end before a GPU is lent (its timings mean nothing)",
    )
    parser.add_argument(
        "--pairs", type=int, default=None, help="B: pairs per DSPO/DPO step (SFT gets 2B images)"
    )
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loss; the median is kept")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trainer's UNet")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--workdir", default=None, help="where to put the model and data (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available() and not args.dry_run:
        parser.error("--gpu needs a CUDA device (or --dry-run)")
    if args.dry_run:
        args.pairs, args.resolution, args.steps, args.repeats = 1, 32, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    # At 512 px the upscaler's latents are 128² (its VAE has factor 4), four times SD 2.1's at 512 px: two
    # pairs keep the activations of an unchecked SD-2.1-sized UNet within one 80 GB GPU. --resolution 256
    # gives 64² latents, the UNet cost of SD 2.1 at 512 px that the reference figures use.
    pairs = args.pairs or (2 if args.gpu else 4)
    resolution = args.resolution or (512 if args.gpu else 64)
    steps = args.steps or (10 if args.gpu else 20)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dspo-bench-"))
    model = work / ("sd21-upscaler" if args.gpu else "tiny-upscaler")
    if not (model / "model_index.json").exists():
        make_sd21_sized_upscaler(model) if args.gpu else make_tiny_model(model, "upscaler")
    dataset = work / f"data-{resolution}"
    if not (dataset / "manifest.json").exists():
        make_bench_dataset(dataset, records=max(4 * pairs, 16), size=resolution)
    base = TrainConfig(
        dataset=str(dataset),
        model=str(model),
        output_dir=str(work / "runs"),
        backbone="upscaler",
        resolution=resolution,
        lora_rank=16 if args.gpu else 4,
        learning_rate=1e-5,
        progress=False,
        flip=False,
        mixed_precision="bf16" if args.gpu else "no",
        compile=args.compile,
        val_repeats=1,
    )

    samples: dict[str, list[float]] = {"sft": [], "dpo": [], "dspo": [], "forward": []}
    last: dict[str, dict] = {}
    for r in range(args.repeats):  # interleaved, so drifts in machine load hit every loss alike
        for loss in ("sft", "dpo", "dspo"):
            batch = 2 * pairs if loss == "sft" else pairs
            times, last[loss] = time_trainer(base, loss, batch, steps, work / "runs" / f"{loss}-{r}")
            samples[loss] += times
        samples["forward"] += time_reference_forward(base, 2 * pairs, steps)
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    fwd = seconds["forward"]
    floor = seconds["sft"] + fwd

    cuda = torch.cuda.is_available() and args.gpu
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\n{device}; model {model.name}; {resolution} px crops; B = {pairs} pairs; "
        f"per-step medians over {args.repeats} runs x {steps} steps"
    )
    print(f"{'':28s} {'s/step':>9s} {'images/s':>9s} {'pairs/s':>9s}")
    print(f"{'SFT (2B images)':28s} {seconds['sft']:9.4f} {2 * pairs / seconds['sft']:9.2f} {'':>9s}")
    print(f"{'no-grad forward (2B images)':28s} {fwd:9.4f} {2 * pairs / fwd:9.2f} {'':>9s}")
    for loss, label in (("dpo", "image-level DPO (B pairs)"), ("dspo", "DSPO (B pairs)")):
        s = seconds[loss]
        print(f"{label:28s} {s:9.4f} {2 * pairs / s:9.2f} {pairs / s:9.2f}")
    ratio_floor, ratio_dpo = seconds["dspo"] / floor, seconds["dspo"] / seconds["dpo"]
    for label, ratio, target in (
        ("DSPO / (SFT + forward)", ratio_floor, 1.10),
        ("DSPO / DPO", ratio_dpo, 1.05),
    ):
        print(f"{label:22s} = {ratio:.3f}  (target <= {target:.2f}: {'ok' if ratio <= target else 'MISSED'})")
    dspo = last["dspo"]
    extra = {k: dspo[k] for k in ("peak_memory_mib", "mfu", "tflops_per_s", "flops_per_step") if k in dspo}
    print(f"DSPO trainer: {json.dumps(extra)}")
    if args.gpu or args.baseline:
        baseline = time_baseline(base, pairs, steps)
        print(f"Diffusion-DPO-example loop: {json.dumps(baseline)}")
        speedup = pairs / seconds["dspo"] / baseline["pairs_per_s"]
        print(f"DSPO trainer pairs/s / baseline pairs/s = {speedup:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
