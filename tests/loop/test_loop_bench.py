"""The loop benchmark end to end at its tiny size (minutes; no quality claim): pretraining, round 1
through a real server over HTTP (uploads, the jobs, simulated votes, a dataset downloaded over REST),
DSPO, DPO and SFT trained by the service's training jobs as model versions, the ceiling (DSPO on the
same records with the HQ images as winners), the five evaluations, round 2 from round 1's DSPO and its
two evaluations, the table, the JSON and the plot."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import loop
from dspo.dataset_format import image_path, read_records

pytestmark = pytest.mark.timeout(1800)


def test_the_tiny_loop_runs_end_to_end(tmp_path: Path) -> None:
    # The held-out photographs as files in a folder, as a user brings their own.
    photos = tmp_path / "held-out-photos"
    photos.mkdir()
    for name in loop.HELD_OUT_PHOTOS:
        loop.photograph(name).save(photos / f"{name}.png")
    out = tmp_path / "out"
    argv = ["--size", "tiny", "--seed", "3", "--out", str(out), "--held-out-photos", str(photos)]
    result = loop.main([*argv, "--rounds", "2"])

    pairs = [(c["b"], c["a"]) for c in result["comparisons"]]
    assert pairs == [
        ("DSPO", "base"),
        ("DPO", "base"),
        ("SFT", "base"),
        ("DSPO-HQ", "base"),
        ("DSPO", "DPO"),
        ("DSPO round 2", "DSPO"),
        ("DSPO round 2", "base"),
    ]
    sizes = loop.SIZES["tiny"]
    for comparison in result["comparisons"]:
        overall = comparison["summary"]["overall"]
        # Every annotator answered every held-out source (the tiny size has no skips).
        assert overall["answers"] == sizes.annotators * sizes.held_out
        assert overall["wins_a"] + overall["wins_b"] + overall["ties"] == overall["answers"]
        low, high = overall["win_rate_interval"]
        assert 0 <= low <= high <= 1
        assert all(0 < q["psnr"] < 100 and -1 <= q["ssim"] <= 1 for q in comparison["quality"].values())
    assert result["dataset_counts"]["records"] > 0
    # Round 2's dataset holds round 1's votes and its own.
    assert result["round_2_dataset_counts"]["records"] > result["dataset_counts"]["records"]
    # Closing a round records the promotion rule's numbers; the project's auto_promote is off.
    assert all(c["decision"]["decision"] == "off" for c in result["comparisons"])
    assert result["photos"]["held-out"] == tuple(
        str(photos / f"{n}.png") for n in sorted(loop.HELD_OUT_PHOTOS)
    )
    assert {r["username"] for r in result["annotators"]} == {f"sim-p1-{n}" for n in range(sizes.annotators)}
    assert set(result["seconds"]) >= {
        "pretrain base",
        "round 1: simulated votes",
        "train dspo",
        "train sft",
        "round 2: simulated votes",
        "train dspo, round 2",
    }
    # Every training but the ceiling's was a job of the service; its LoRA is kept in --out.
    for name in ("round1-dspo", "round1-dpo", "round1-sft", "round2-dspo"):
        assert (out / f"train-{name}" / "pytorch_lora_weights.safetensors").is_file()
        assert json.loads((out / f"train-{name}" / "training_config.json").read_text())["max_steps"] == 2

    table = (out / "loop.md").read_text()
    assert "| DSPO vs DPO |" in table and "| DSPO round 2 vs DSPO |" in table and "| total |" in table
    assert "round 2 from round 1's DSPO" in table
    assert json.loads((out / "loop.json").read_text())["seed"] == 3
    assert (out / "loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The ceiling trained on the round's records, each winner replaced by its source's HQ image.
    ceiling = read_records(out / "dataset-ceiling")
    round_1 = read_records(min(out.glob("dataset-[0-9]*/*/manifest.json")).parent)
    assert [(r.record_id, r.loser, r.mask) for r in ceiling] == [
        (r.record_id, r.loser, r.mask) for r in round_1
    ]
    assert len({r.winner for r in ceiling}) == len({r.source_id for r in round_1})
    # Each ceiling winner is the pixels of a round-1 tile (an upload), none a candidate.
    folder = out / "dataset-ceiling"
    uploads = {np.asarray(img).tobytes() for _, img in loop.tiles(loop.ROUND_PHOTOS, sizes.tile)}
    for sha in {r.winner for r in ceiling}:
        with Image.open(image_path(folder, sha)) as winner:
            assert np.asarray(winner.convert("RGB")).tobytes() in uploads
    assert {r.winner for r in ceiling}.isdisjoint({r.winner for r in round_1})
    # The base model is a diffusers folder its pipeline loads, with the pretraining's record.
    assert (out / "base" / "model_index.json").is_file()
    assert json.loads((out / "base" / "pretrain.json").read_text())["config"]["seed"] == 3


def test_photograph_sets_take_names_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("b.jpg", "red"), ("a.png", "blue")):
        Image.new("RGB", (300, 140), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "single.png"
    Image.new("L", (64, 64), 128).save(single)

    names = loop.photo_set(f"coffee,{folder},{single},coffee")
    assert names == ("coffee", str(folder / "a.png"), str(folder / "b.jpg"), str(single))
    named = loop.tiles(names[1:], 128)
    # Two whole tiles of each 300 x 140 image, named after its file; grey becomes RGB.
    assert [n for n, _ in named] == ["a-0-0", "a-0-1", "b-0-0", "b-0-1"]
    assert named[0][1].getpixel((5, 5)) == (0, 0, 255)
    assert loop.photograph(str(single)).mode == "RGB"
    (tmp_path / "empty").mkdir()
    for wrong in ("no-such-photo", str(folder / "notes.txt"), str(tmp_path / "empty")):
        with pytest.raises(SystemExit, match="not an image file|no images in this folder"):
            loop.photo_set(wrong)


def test_a_photograph_in_two_sets_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    args, _ = loop.parse_args(["--round-photos", "coffee,astronaut", "--held-out-photos", "chelsea"])
    assert args.round_photos == ("coffee", "astronaut") and args.pretrain_photos == loop.PRETRAIN_PHOTOS
    with pytest.raises(SystemExit):
        loop.parse_args(["--round-photos", "coffee,chelsea"])
    assert "photographs in both --round-photos and --held-out-photos: chelsea" in capsys.readouterr().err
