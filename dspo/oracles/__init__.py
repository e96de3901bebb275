"""Oracles: the judgement of a simulated annotator (`dspo simulate`), as plug-ins.

An oracle is a function ``oracle(query: OracleQuery) -> Sequence[float] | Judgement``: given what a
task shows (the candidates, or the two outputs of an evaluation, with the LQ image, the region and,
where the source was uploaded as HQ, the HQ image), it returns one score per candidate, in the order
of ``query.candidates``, higher is better; optionally a Judgement that adds texts. Scores are in the
oracle's own unit: the simulated annotators' noise and tie threshold are in that unit too.

Oracles are found by name in the entry-point group ``dspo.oracles`` (pyproject.toml), or given as
``module:callable`` (anything importable). docs/loop.md has the full contract."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from math import isfinite

import numpy as np


@dataclass(frozen=True)
class OracleQuery:
    """What one task shows. Images are RGB uint8 arrays (height, width, 3); SR pixels for the
    candidates, the mask and the box; `scale` times fewer for the LQ image."""

    lq: np.ndarray
    candidates: Sequence[np.ndarray]  # in the order the annotator was shown them
    hq: np.ndarray | None  # the uploaded HQ image (an HQ upload), cropped to the SR size; else None
    mask: np.ndarray | None  # bool (height, width): the region; None for an image-level task
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the region in SR pixels
    scale: int
    kind: str  # "instance" or "image" (evaluation tasks will add their own)
    prompt: str = ""
    candidate_ids: Sequence[int] = ()  # the ids the API shows, in the same order; opaque

    @property
    def region(self) -> np.ndarray:
        """The mask, or the whole image when the task has none."""
        if self.mask is not None:
            return self.mask
        return np.ones(self.candidates[0].shape[:2], dtype=bool)


@dataclass(frozen=True)
class Judgement:
    """Scores (one per candidate, higher is better) and, optionally, what the region shows and what
    is wrong in the worst candidate: the simulator sends them as the vote's content and defect texts."""

    scores: Sequence[float]
    content_text: str = ""
    defect_text: str = ""


Oracle = Callable[[OracleQuery], "Sequence[float] | Judgement"]


class OracleError(ValueError):
    pass


@cache
def available() -> dict[str, str]:
    """Oracle names in the entry-point group `dspo.oracles` → their `module:callable`."""
    return {ep.name: ep.value for ep in entry_points(group="dspo.oracles")}


def load_oracle(name: str) -> Oracle:
    """An oracle by entry-point name, or `module:callable`."""
    target = available().get(name, name)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        known = ", ".join(sorted(available())) or "none"
        raise OracleError(f"unknown oracle {name!r}: give an installed name ({known}) or module:callable")
    try:
        found: object = import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise OracleError(f"cannot load the oracle {target!r}: {exc}") from None
    if not callable(found):
        raise OracleError(f"the oracle {target!r} is not callable")
    return found  # type: ignore[return-value]


def judge(oracle: Oracle, query: OracleQuery) -> Judgement:
    """Call the oracle and check its answer: one finite score per candidate."""
    answer = oracle(query)
    judgement = answer if isinstance(answer, Judgement) else Judgement(scores=list(answer))
    scores = [float(s) for s in judgement.scores]
    if len(scores) != len(query.candidates) or not all(isfinite(s) for s in scores):
        raise OracleError(
            f"the oracle returned {judgement.scores!r}: it must return one finite score per candidate "
            f"({len(query.candidates)})"
        )
    return Judgement(scores, judgement.content_text, judgement.defect_text)
