"""The loop benchmark end to end at its tiny size (minutes; no quality claim): pretraining, round 1
through a real server over HTTP (uploads, the jobs, simulated votes, a dataset downloaded over REST),
DSPO, DPO and SFT trained by the trainer's CLI and registered as model versions, the ceiling (DSPO on
the same records with the HQ images as winners), the five evaluations, the table, the JSON and the plot."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import loop
from dspo.dataset_format import image_path, read_records

pytestmark = pytest.mark.timeout(1800)


def test_the_tiny_loop_runs_end_to_end(tmp_path: Path) -> None:
    result = loop.main(["--size", "tiny", "--seed", "3", "--out", str(tmp_path)])

    pairs = [(c["b"], c["a"]) for c in result["comparisons"]]
    assert pairs == [("DSPO", "base"), ("DPO", "base"), ("SFT", "base"), ("DSPO-HQ", "base"), ("DSPO", "DPO")]
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
    assert {r["username"] for r in result["annotators"]} == {f"sim-p1-{n}" for n in range(sizes.annotators)}
    assert set(result["seconds"]) >= {"pretrain base", "round 1: simulated votes", "train dspo", "train sft"}

    table = (tmp_path / "loop.md").read_text()
    assert "| DSPO vs DPO |" in table and "| total |" in table
    assert json.loads((tmp_path / "loop.json").read_text())["seed"] == 3
    assert (tmp_path / "loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The ceiling trained on the round's records, each winner replaced by its source's HQ image.
    ceiling, round_1 = (
        read_records(next(tmp_path.glob(p)).parent)
        for p in ("dataset-ceiling/manifest.json", "dataset-*/*/manifest.json")
    )
    assert [(r.record_id, r.loser, r.mask) for r in ceiling] == [
        (r.record_id, r.loser, r.mask) for r in round_1
    ]
    assert len({r.winner for r in ceiling}) == len({r.source_id for r in round_1})
    # Each ceiling winner is the pixels of a round-1 tile (an upload), none a candidate.
    folder = next(tmp_path.glob("dataset-ceiling/manifest.json")).parent
    uploads = {np.asarray(img).tobytes() for _, img in loop.tiles(loop.ROUND_PHOTOS, sizes.tile)}
    for sha in {r.winner for r in ceiling}:
        with Image.open(image_path(folder, sha)) as winner:
            assert np.asarray(winner.convert("RGB")).tobytes() in uploads
    assert {r.winner for r in ceiling}.isdisjoint({r.winner for r in round_1})
    # The base model is a diffusers folder its pipeline loads, with the pretraining's record.
    assert (tmp_path / "base" / "model_index.json").is_file()
    assert json.loads((tmp_path / "base" / "pretrain.json").read_text())["config"]["seed"] == 3
