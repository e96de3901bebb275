"""Candidate generators by name, from the entry-point group ``dspo.generators`` (pyproject.toml): the
shared core and the server name and load them without importing the worker package."""

from functools import cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "dspo.generators"


@cache
def generator_names() -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in entry_points(group=GROUP)))


def generator_class(name: str) -> type[Any]:
    """The generator class registered under `name` (its module is imported only now)."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise ValueError(f"Unknown generator {name!r}; known generators: {', '.join(generator_names())}")
    return next(iter(found)).load()
