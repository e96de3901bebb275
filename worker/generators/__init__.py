"""SR candidate generators, found by name."""

from __future__ import annotations

from typing import Any

from worker.generators.base import Candidate, Generator, GeneratorUnavailable
from worker.generators.classical import ClassicalGenerator

__all__ = ["Candidate", "Generator", "GeneratorUnavailable", "KNOWN_GENERATORS", "get_generator"]

KNOWN_GENERATORS = ("classical", "realesrgan", "diffusion")


def get_generator(name: str, **settings: Any) -> Generator:
    """Build a generator by name; settings go to its constructor. realesrgan and diffusion are imported
    only here, and raise GeneratorUnavailable with an install hint if they cannot run."""
    if name == "classical":
        cls: type = ClassicalGenerator
    elif name == "realesrgan":
        from worker.generators.realesrgan import RealesrganGenerator

        cls = RealesrganGenerator
    elif name == "diffusion":
        from worker.generators.diffusion import DiffusionGenerator

        cls = DiffusionGenerator
    else:
        raise ValueError(f"Unknown generator {name!r}; known generators: {', '.join(KNOWN_GENERATORS)}")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ValueError(f"Bad settings for generator {name!r}: {exc}") from exc
