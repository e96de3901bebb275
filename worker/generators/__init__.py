"""SR candidate generators, found by name in the entry-point group ``dspo.generators``."""

from __future__ import annotations

from typing import Any

from dspo.generators import generator_class, generator_names
from worker.generators.base import Candidate, Generator, GeneratorUnavailable

__all__ = ["Candidate", "Generator", "GeneratorUnavailable", "KNOWN_GENERATORS", "get_generator"]

KNOWN_GENERATORS = generator_names()


def get_generator(name: str, **settings: Any) -> Generator:
    """Build a generator by name; settings go to its constructor. A generator's module is imported
    only here; realesrgan and diffusion raise GeneratorUnavailable with an install hint if they cannot
    run."""
    cls = generator_class(name)
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ValueError(f"Bad settings for generator {name!r}: {exc}") from exc
