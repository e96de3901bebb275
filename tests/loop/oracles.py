"""Oracles for the tests, given to `dspo simulate` as module:callable."""

from collections.abc import Sequence

from dspo.oracles import Judgement, OracleQuery

CALLS: list[OracleQuery] = []


def prefer_lowest_id(query: OracleQuery) -> Judgement:
    """Always prefers the candidate with the lowest id (the first a source's job made) and likes the
    highest id least, whatever the images; says what it judged."""
    CALLS.append(query)
    return Judgement(
        scores=[-float(i) for i in query.candidate_ids],
        content_text=f"{query.kind} region",
        defect_text="not the lowest id",
    )


def wrong_length(query: OracleQuery) -> Sequence[float]:
    return [1.0]
