from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import make_dataset

from trainer.backbones import BACKBONES
from trainer.config import TrainConfig
from trainer.train import train


def config(dataset: Path, model: Path, out: Path, backbone: str, **overrides) -> TrainConfig:
    settings = dict(
        dataset=str(dataset),
        model=str(model),
        output_dir=str(out),
        backbone=backbone,
        resolution=32,
        batch_size=2,
        max_steps=3,
        log_every=1,
        learning_rate=1e-3,
        lora_rank=4,
        progress=False,
        val_repeats=1,
        beta=5000.0 if backbone == "upscaler" else 0.05,
    )
    return TrainConfig(**{**settings, **overrides})


def read_history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lq_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def run_pipeline(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    if hasattr(pipe, "low_res_scheduler"):
        out = pipe(
            prompt="a photo", image=lq_image(), num_inference_steps=2, generator=generator, output_type="np"
        )
    else:
        out = pipe(lq_image(), prompt="a photo", output_type="np")
    return out.images


@pytest.mark.parametrize("backbone", ["upscaler", "onestep"])
@pytest.mark.parametrize("loss", ["dspo", "dpo", "sft"])
def test_each_backbone_trains_with_each_loss(tiny_models, dataset, tmp_path, backbone, loss) -> None:
    out = tmp_path / "out"
    result = train(config(dataset, tiny_models[backbone], out, backbone, loss=loss))
    history = read_history(out)
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert result.metrics["skipped_steps"] == 0
    if loss != "sft":
        # Before the first update the model is the reference: logits are exactly 0.
        assert history[0]["reward_margin"] == 0.0
        assert {"accuracy", "model_err_w", "model_err_l", "ref_err_w", "ref_err_l"} <= history[0].keys()
        assert history[-1]["reward_margin"] != 0.0
    assert "val_instance_accuracy" in result.metrics
    assert (out / "pytorch_lora_weights.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "synthetic" in card and json.loads((out / "metrics.json").read_text())["flops_per_step"] > 0
    assert any((out / "logs").iterdir())


@pytest.mark.parametrize("backbone", ["upscaler", "onestep"])
def test_saved_lora_reloads_into_a_fresh_pipeline(tiny_models, dataset, tmp_path, backbone) -> None:
    out = tmp_path / "out"
    extra = {"lora_vae_encoder": True} if backbone == "onestep" else {}
    result = train(config(dataset, tiny_models[backbone], out, backbone, **extra))
    trained = run_pipeline(result.pipeline)
    pipe_class = BACKBONES[backbone].pipeline_class
    base = pipe_class.from_pretrained(tiny_models[backbone])
    before = run_pipeline(base)
    base.load_lora_weights(out)
    after = run_pipeline(base)
    assert np.abs(trained - before).max() > 1e-4, "training changed nothing: the test would prove nothing"
    np.testing.assert_array_equal(after, trained)
    if backbone == "onestep":
        assert any("lora" in n for n, _ in base.vae.encoder.named_parameters())


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_resume_continues_exactly(tiny_models, dataset, tmp_path, lora_rank) -> None:
    full = tmp_path / "full"
    settings = dict(max_steps=4, checkpoint_every=2, gradient_accumulation_steps=2, lora_rank=lora_rank)
    train(config(dataset, tiny_models["upscaler"], full, "upscaler", **settings))
    uninterrupted = read_history(full)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    train(config(dataset, tiny_models["upscaler"], resumed, "upscaler", resume="latest", **settings))
    after = read_history(resumed)
    assert [h["step"] for h in after] == [3, 4]
    for key in ("loss", "model_err_w", "model_err_l", "reward_margin"):
        assert [h[key] for h in after] == [h[key] for h in uninterrupted[2:]], key


def test_non_finite_steps_are_skipped_and_counted(tiny_models, dataset, tmp_path, monkeypatch) -> None:
    import trainer.train as train_module

    real = train_module.training_loss
    calls = []

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls.append(1)
        # Call 1 is the FLOP-counting pass, call 2 trains step 1: poison step 2.
        return (loss * float("nan"), metrics) if len(calls) == 3 else (loss, metrics)

    monkeypatch.setattr(train_module, "training_loss", poisoned)
    result = train(config(dataset, tiny_models["upscaler"], tmp_path / "out", "upscaler"))
    history = read_history(tmp_path / "out")
    assert result.metrics["skipped_steps"] == 1
    assert [h["skipped_steps"] for h in history] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in result.pipeline.unet.parameters())


@pytest.mark.parametrize("backbone", ["upscaler", "onestep"])
def test_bf16_mixed_precision(tiny_models, dataset, tmp_path, backbone) -> None:
    extra = {"lora_vae_encoder": True} if backbone == "onestep" else {}
    result = train(
        config(
            dataset,
            tiny_models[backbone],
            tmp_path / "out",
            backbone,
            mixed_precision="bf16",
            max_steps=2,
            **extra,
        )
    )
    assert result.metrics["skipped_steps"] == 0 and np.isfinite(result.metrics["loss"])
    assert result.pipeline.unet.dtype == torch.bfloat16
    lora = [p for n, p in result.pipeline.unet.named_parameters() if "lora" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_settings_are_checked(tiny_models, dataset, tmp_path) -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        config(dataset, tiny_models["upscaler"], tmp_path, "upscaler", loss="kto")
    with pytest.raises(ValueError, match="multiples of"):
        train(config(dataset, tiny_models["upscaler"], tmp_path, "upscaler", resolution=36))


def test_dspo_trains_on_instance_records_and_says_so(tiny_models, tmp_path) -> None:
    data = make_dataset(tmp_path / "ds", sources=2, val_sources=1, image_level=True)
    runs = {"dspo": {}, "dpo": {"loss": "dpo"}, "mix": {"image_level_weight": 1.0}}
    for name, extra in runs.items():
        out = tmp_path / name
        result = train(config(data, tiny_models["upscaler"], out, "upscaler", max_steps=1, **extra))
        records = json.loads((out / "training_config.json").read_text())["records"]
        assert records["val"] == {"instance": 2, "image": 1}
        # Validation is reported per record kind, whatever the loss.
        assert {"val_instance_accuracy", "val_image_accuracy", "val_image_loss"} <= result.metrics.keys()
        card = (out / "README.md").read_text()
        assert f"Trained on: {records['trained_on']}" in card
        runs[name] = records
    assert runs["dspo"]["train"] == {"instance": 4, "image": 0}
    assert runs["dspo"]["trained_on"] == "4 instance records"
    assert runs["dpo"]["train"] == {"instance": 0, "image": 2}
    assert runs["mix"]["train"] == {"instance": 4, "image": 2}


def test_validation_has_its_own_schedule(tiny_models, dataset, tmp_path) -> None:
    out = tmp_path / "out"
    train(config(dataset, tiny_models["upscaler"], out, "upscaler", max_steps=4, log_every=2, val_every=3))
    history = {h["step"]: h for h in read_history(out)}
    assert sorted(history) == [2, 3, 4]
    assert "val_instance_accuracy" in history[3] and "loss" not in history[3]
    assert "val_instance_accuracy" not in history[2]


def test_empty_val_split_is_said_not_skipped(tiny_models, tmp_path) -> None:
    data = make_dataset(tmp_path / "ds", sources=2, val_sources=0)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="no val records"):
        result = train(config(data, tiny_models["upscaler"], out, "upscaler", max_steps=1))
    assert not any(k.startswith("val_") for k in result.metrics)
    assert "no held-out validation: the dataset's val split is empty" in (out / "README.md").read_text()


def test_resume_skips_a_checkpoint_that_fails_its_checksum(tiny_models, dataset, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    settings = dict(max_steps=5, checkpoint_every=2)
    train(config(dataset, tiny_models["upscaler"], out, "upscaler", **settings))
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-4"]  # no temporary left
    state = checkpoints / "step-4" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])  # a truncated write
    with pytest.raises(ValueError, match="does not match its checksum"):
        train(config(dataset, tiny_models["upscaler"], out, "upscaler", resume=str(state.parent), **settings))
    train(config(dataset, tiny_models["upscaler"], out, "upscaler", resume="latest", **settings))
    assert "skipping checkpoint" in capsys.readouterr().err
    assert [h["step"] for h in read_history(out)][-3:] == [3, 4, 5]


def test_fp16_overflow_is_skipped_through_the_grad_scaler() -> None:
    """A GradScaler on the CPU, as accelerate sets one up for fp16 on a GPU: an overflowing step is skipped
    by the scaler, which lowers its scale, and the next step trains (it used to fail in clip_grad_norm_)."""
    from accelerate import Accelerator

    from trainer.train import optimizer_step

    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.native_amp = True  # what accelerate does for fp16 on a GPU
    # Scaled by 2^20 in fp16 (autocast from prepare), the loss overflows; one back-off brings it to 2^10.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, backoff_factor=2.0**-10)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    x = torch.ones(2, 4)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(x).sum()
    assert torch.isfinite(loss)
    accelerator.backward(loss)
    assert not optimizer_step(accelerator, optimizer, scheduler, list(model.parameters()), 1.0, bad=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert accelerator.scaler.get_scale() == 2.0**10
    accelerator.backward(model(x).sum())
    assert optimizer_step(accelerator, optimizer, scheduler, list(model.parameters()), 1.0, bad=False)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
