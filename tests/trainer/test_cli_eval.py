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


def test_make_tiny_model_train_and_eval(dataset: Path, tmp_path: Path, capsys) -> None:
    model, out, ev = tmp_path / "model", tmp_path / "run", tmp_path / "eval"
    assert run("make-tiny-model", str(model), "--backbone", "upscaler") == 0
    code = run(
        "train",
        "--dataset",
        str(dataset),
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
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n") :])["skipped_steps"] == 0

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
