"""`dspo labelstudio import` of Label Studio JSON exports (pairwise and choices configs over images),
with the example mapping files of docs/examples, into projects whose datasets build."""

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from dspo.labelstudio.importer import import_export
from dspo.models import Candidate, Project, Task, User, Vote
from dspo.runtime import Runtime
from tests.helpers import png_bytes

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"


def write_images(folder: Path, names: list[str], seed: int) -> None:
    """An LQ image (24x16) and x4 candidates (96x64) as Label Studio's local-files storage holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lq.png").write_bytes(png_bytes(24, 16, seed))
    for offset, name in enumerate(names):
        (folder / f"{name}.png").write_bytes(png_bytes(96, 64, seed * 10 + offset))


def local(path: str) -> str:
    return f"/data/local-files/?d={path}"


def test_pairwise_export_becomes_a_project_with_votes(runtime: Runtime, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.json"
    shutil.copy(EXAMPLES / "labelstudio-pairwise-mapping.json", mapping)
    tasks = []
    for n in range(2):
        write_images(tmp_path / "files" / f"t{n}", ["left", "right"], n)
        data = {key: local(f"t{n}/{key}.png") for key in ("lq", "left", "right")}

        def annotation(aid: int, user: object, side: str, text: str = "") -> dict:
            result = [
                {
                    "from_name": "comparison",
                    "to_name": "left",
                    "type": "pairwise",
                    "value": {"selected": side},
                }
            ]
            if text:
                result.append(
                    {"from_name": "what", "to_name": "left", "type": "textarea", "value": {"text": [text]}}
                )
            return {"id": aid, "completed_by": user, "result": result, "was_cancelled": False}

        tasks.append(
            {
                "id": 100 + n,
                "data": data,
                "annotations": [
                    annotation(10 * n + 1, 1, "left", "a face"),
                    annotation(10 * n + 2, {"id": 2, "email": "Bo@Example.com"}, "right"),
                    annotation(10 * n + 3, 3, "left"),  # user 3: no e-mail anywhere, so rejected
                ],
            }
        )
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))

    result = import_export(runtime, export, mapping)
    assert (result.tasks, result.sources_added, result.votes_added) == (2, 2, 4)
    assert len(result.rejected) == 2 and all("user 3 has no e-mail" in r for r in result.rejected)
    again = import_export(runtime, export, mapping)  # importing again adds nothing
    assert (again.project_id, again.sources_added, again.votes_added, again.votes_known) == (
        result.project_id,
        0,
        0,
        4,
    )

    with runtime.sessions() as session:
        project = session.get(Project, result.project_id)
        assert project is not None and (project.n_candidates, project.scale, project.overlap) == (2, 4, 3)
        rows = session.execute(
            select(User.username, Vote, Task)
            .join(Vote, Vote.user_id == User.id)
            .join(Task, Task.id == Vote.task_id)
            .where(Task.project_id == project.id)
        ).all()
        assert {name for name, _, _ in rows} == {"ann@example.com", "bo@example.com"}
        for name, vote, task in rows:
            query = select(Candidate.model, Candidate.id).where(Candidate.source_id == task.source_id)
            by_key = dict(session.execute(query).all())
            best, worst = ("left", "right") if name == "ann@example.com" else ("right", "left")
            assert (vote.outcome, vote.best_candidate_id, vote.worst_candidate_id) == (
                "pick",
                by_key[best],
                by_key[worst],
            )
            assert vote.content_text == ("a face" if name == "ann@example.com" else "")
            assert task.kind == "image" and task.instance_id is None


def test_choices_export_with_best_worst_and_verdicts(runtime: Runtime, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.json"
    shutil.copy(EXAMPLES / "labelstudio-choices-mapping.json", mapping)
    write_images(tmp_path / "files" / "t0", ["a", "b", "c"], 7)
    data = {key: local(f"t0/{key}.png") for key in ("lq", "a", "b", "c")}

    def choices(aid: int, email: str, **picked: str) -> dict:
        result = [
            {"from_name": name, "to_name": "a", "type": "choices", "value": {"choices": [value]}}
            for name, value in picked.items()
        ]
        return {"id": aid, "completed_by": {"id": aid, "email": email}, "result": result}

    annotations = [
        choices(1, "x@example.com", best="Image C", worst="Image A"),
        choices(2, "y@example.com", best="All bad"),
        choices(3, "z@example.com", best="Image B", worst="Image B"),  # rejected: the same
        choices(4, "w@example.com", best="Image D", worst="Image A"),  # rejected: unknown choice
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 5, "data": data, "annotations": annotations}]))

    result = import_export(runtime, export, mapping)
    assert result.votes_added == 2 and len(result.rejected) == 2
    assert "the same" in result.rejected[0] and "unknown choice 'Image D'" in result.rejected[1]
    with runtime.sessions() as session:
        votes = session.scalars(select(Vote).order_by(Vote.id)).all()
        by_key = dict(session.execute(select(Candidate.model, Candidate.id)).all())
        assert [(v.outcome, v.best_candidate_id, v.worst_candidate_id) for v in votes] == [
            ("pick", by_key["c"], by_key["a"]),
            ("all_bad", None, None),
        ]


def test_a_mapping_that_does_not_fit_says_why(runtime: Runtime, tmp_path: Path) -> None:
    from dspo.errors import InvalidInput

    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"project": {"name": "x"}, "lq": "lq", "candidates": ["a"]}))
    with pytest.raises(InvalidInput, match="mapping file"):
        import_export(runtime, tmp_path / "missing.json", mapping)
