"""What every SR candidate generator provides: the Candidate record and the Generator protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image


class GeneratorUnavailable(RuntimeError):
    """A generator cannot run on this machine (a missing package or system library); the message
    says what to install."""


@dataclass
class Candidate:
    """One SR candidate and its provenance."""

    image: Image.Image
    generator: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    weights_digest: str | None = None


@runtime_checkable
class Generator(Protocol):
    """Makes n SR candidates of an LQ image, each exactly (lq.width * scale, lq.height * scale),
    deterministic for a given seed."""

    name: str

    def generate(self, lq: Image.Image, *, scale: int, n: int, seed: int) -> list[Candidate]: ...


def check_request(lq: Image.Image, *, scale: int, n: int) -> None:
    """Validate the common arguments of Generator.generate, with clear messages."""
    if not isinstance(scale, int) or not 2 <= scale <= 8:
        raise ValueError(f"scale must be an integer from 2 to 8, got {scale!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (candidates wanted) must be a positive integer, got {n!r}")
    if lq.width < 1 or lq.height < 1:
        raise ValueError(f"LQ image is empty ({lq.width}x{lq.height})")
