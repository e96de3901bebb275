from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dspo")
    cli.register(p.add_subparsers(dest="command", required=True))
    return p


def run(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return args.func(args)


def test_make_tiny_model_train_and_eval(dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from dspo.exports import tar_folder

    model, out, ev = tmp_path / "model", tmp_path / "run", tmp_path / "eval"
    assert run("make-tiny-model", str(model), "--backbone", "upscaler") == 0
    # The dataset as it is downloaded: dataset.tar, holding one dataset-N/ folder.
    tar = tar_folder(dataset, tmp_path / "dataset.tar", arcname="dataset-7")
    code = run(
        "train",
        "--dataset",
        str(tar),
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--backbone",
        "upscaler",
        "--loss",
        "dspo",
        "--resolution",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--lora-rank",
        "4",
        "--learning-rate",
        "1e-3",
        "--no-progress",
        "--no-text-feedback",
    )
    assert code == 0
    settings = json.loads((out / "training_config.json").read_text())
    assert settings["text_feedback"] is False and settings["lora_rank"] == 4
    assert Path(settings["dataset"]) == out / "dataset" / "dataset-7"
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n") :])["skipped_steps"] == 0
    assert "device cpu: the first step took" in printed and "the 1 steps left will take" in printed
    assert "CPU recipe" in printed
    check_model_card(out, model, tmp_path / "use", monkeypatch)

    # HQ for PSNR/SSIM: a folder named like the source ids of the val split.
    hq = tmp_path / "hq"
    hq.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(hq / "s4.png")
    code = run(
        "eval",
        "--backbone",
        "upscaler",
        "--model",
        str(model),
        "--lora",
        str(out),
        "--dataset",
        str(dataset),
        "--hq",
        str(hq),
        "--out",
        str(ev),
        "--steps",
        "2",
    )
    assert code == 0
    manifest = json.loads((ev / "manifest.json").read_text())
    assert manifest["format"] == "dspo-ab" and manifest["version"] == 1
    assert manifest["pairs"] == [
        {"id": "s4", "lq": "lq/s4.png", "a": "base/s4.png", "b": "tuned/s4.png", "prompt": "a photo"}
    ]
    for pair in manifest["pairs"]:
        for key in ("lq", "a", "b"):
            assert (ev / pair[key]).is_file()
    assert Image.open(ev / "base" / "s4.png").size == (32, 32) and Image.open(ev / "lq" / "s4.png").size == (
        8,
        8,
    )
    metrics = json.loads((ev / "metrics.json").read_text())
    for variant in ("base", "tuned"):
        assert (
            0 < metrics["variants"][variant]["psnr"] < 100 and -1 <= metrics["variants"][variant]["ssim"] <= 1
        )


def test_clear_errors(dataset: Path, tmp_path: Path, capsys) -> None:
    code = run(
        "train",
        "--dataset",
        str(tmp_path / "nothing"),
        "--model",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert code == 2 and "no manifest.json" in capsys.readouterr().err
    args = ["train", "--dataset", str(dataset), "--model", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit):  # argparse refuses an unknown loss before anything runs
        run(*args, "--loss", "kto")
    assert "invalid choice: 'kto'" in capsys.readouterr().err
    assert run(*args) == 2  # no model in that folder
    assert capsys.readouterr().err.startswith("dspo train: ")


def test_dataset_paths_that_are_accepted(dataset: Path, tmp_path: Path) -> None:
    import tarfile

    from dspo.dataset_format import DatasetError, locate_dataset
    from dspo.exports import tar_folder

    assert locate_dataset(dataset, tmp_path / "x") == dataset
    tar = tar_folder(dataset, tmp_path / "dataset.tar", arcname="dataset-3")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tar) as t:
        t.extractall(unpacked, filter="data")
    # The folder the tar was unpacked into holds dataset-3/: that is found.
    assert locate_dataset(unpacked, tmp_path / "x") == unpacked / "dataset-3"
    assert locate_dataset(tar, tmp_path / "x") == tmp_path / "x" / "dataset-3"
    with pytest.raises(DatasetError, match="no manifest.json here or in one folder below it"):
        locate_dataset(tmp_path / "x" / "dataset-3" / "images", tmp_path / "y")


def test_train_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        run("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "training crop size in SR pixels (default: 512)" in text
    assert "records (pairs) per device per micro-batch (default: 4)" in text
    assert "CPU recipe in docs/trainer.md" in text


def check_model_card(out: Path, model: Path, workdir: Path, monkeypatch) -> None:
    """Hub-ready metadata, and a usage snippet that runs as written."""
    import yaml

    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert "base_model" not in front, "a local folder is not a Hub id"
    assert front["pipeline_tag"] == "image-to-image" and front["license"] == "other"
    assert front["library_name"] == "diffusers" and front["datasets"] == ["synthetic"]
    assert len(front["tags"]) == len(set(front["tags"])) and "dspo" in front["tags"]
    snippet = text.split("```python\n")[1].split("```")[0]
    assert "import" in snippet and str(model) in snippet and str(out) in snippet
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save("low_res.png")
    exec(compile(snippet.replace("pipe(", "pipe(num_inference_steps=2, ", 1), "card", "exec"), {})
    assert Image.open("upscaled.png").size == (32, 32)


def test_model_card_base_model_is_a_hub_id_or_nothing() -> None:
    from trainer.config import TrainConfig
    from trainer.model_card import hub_id

    cache = "/root/.cache/huggingface/hub/models--stabilityai--stable-diffusion-x4-upscaler/snapshots/0a1b2c"
    assert hub_id(TrainConfig("d", cache, "o")) == "stabilityai/stable-diffusion-x4-upscaler"
    assert hub_id(TrainConfig("d", "/models/mine", "o", hub_base_model="me/sr")) == "me/sr"
    assert hub_id(TrainConfig("d", "/models/mine", "o")) is None
