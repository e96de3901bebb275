"""The diffusion generator on tiny random backbones: provenance, reproducibility, one-step prompts."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import png_bytes
from worker.generators import get_generator


@pytest.fixture(scope="module")
def lq() -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(24, 16, 0)))


def test_upscaler_candidate_i_does_not_depend_on_n(tmp_path: Path, lq: Image.Image) -> None:
    from trainer.tiny import make_tiny_model

    model = str(make_tiny_model(tmp_path / "upscaler", "upscaler"))
    generator = get_generator("diffusion", model=model, guidance=[4.0, 8.0], steps=[1, 2], batch_size=1)
    two = generator.generate(lq, scale=4, n=2, seed=11)
    one = generator.generate(lq, scale=4, n=1, seed=11)
    assert np.array_equal(np.asarray(one[0].image), np.asarray(two[0].image))
    assert [c.seed for c in two] == [11, 12] and two[1].settings["guidance"] == 8.0
    assert len({c.weights_digest for c in two}) == 1 and two[0].model == model
    with pytest.raises(ValueError, match="x4"):
        generator.generate(lq, scale=2, n=1, seed=0)


def test_candidates_can_share_the_source_seed(tmp_path: Path, lq: Image.Image) -> None:
    from trainer.tiny import make_tiny_model

    model = str(make_tiny_model(tmp_path / "upscaler", "upscaler"))
    settings = {"model": model, "guidance": [4.0, 4.0], "steps": [1, 2], "batch_size": 1}
    shared = get_generator("diffusion", **settings, vary_seed=False).generate(lq, scale=4, n=2, seed=11)
    varied = get_generator("diffusion", **settings).generate(lq, scale=4, n=2, seed=11)
    assert [c.seed for c in shared] == [11, 11] and [c.seed for c in varied] == [11, 12]
    # Candidate 0 is the same either way; candidate 1 differs by its seed only where seeds vary.
    assert np.array_equal(np.asarray(shared[0].image), np.asarray(varied[0].image))
    assert not np.array_equal(np.asarray(shared[1].image), np.asarray(varied[1].image))
    one_setting = get_generator("diffusion", model=model, guidance=[4.0], steps=[1], vary_seed=False)
    with pytest.raises(ValueError, match="1 distinct combinations"):
        one_setting.generate(lq, scale=4, n=2, seed=0)
    with pytest.raises(ValueError, match="vary_seed must be true or false"):
        get_generator("diffusion", model=model, vary_seed="false")


def test_onestep_needs_distinct_prompts(tmp_path: Path, lq: Image.Image) -> None:
    from trainer.tiny import make_tiny_model

    model = str(make_tiny_model(tmp_path / "onestep", "onestep"))
    made = get_generator("diffusion", model=model, backbone="onestep", prompts=["a", "b"]).generate(
        lq, scale=4, n=2, seed=0
    )
    assert [c.settings["prompt"] for c in made] == ["a", "b"] and made[0].image.size == (96, 64)
    assert not np.array_equal(np.asarray(made[0].image), np.asarray(made[1].image))
    with pytest.raises(ValueError, match="distinct prompts"):
        get_generator("diffusion", model=model, backbone="onestep").generate(lq, scale=4, n=2, seed=0)
    with pytest.raises(ValueError, match="not a local diffusers folder"):
        get_generator("diffusion", model=str(tmp_path / "missing"))
