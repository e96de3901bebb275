"""`dspo labelstudio import`: an existing Label Studio project's JSON export (a pairwise or a choices
config over images) becomes a project here, one source per Label Studio task with its images as the
candidates of one image-level task, and each annotation a vote, through a small mapping file (see
docs/labelstudio.md). Importing again adds only what is new: sources are found by their bytes, votes by
the annotation id."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dspo import assign
from dspo.db import utcnow
from dspo.errors import DspoError, InvalidInput
from dspo.images import ImageRejected, decode_upload, encode_png
from dspo.ingest import add_source
from dspo.labelstudio.answers import NO_PASSWORD
from dspo.labelstudio.config import Answer, AnswerRejected
from dspo.models import Candidate, Project, Task, User
from dspo.runtime import Runtime
from dspo.services.projects import create_project
from dspo.services.users import check_username


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectFields(_Strict):
    name: str = Field(min_length=1, max_length=200)
    instructions: str = ""
    overlap: int = Field(default=3, ge=1, le=20)


class AnswerMapping(_Strict):
    type: str = Field(pattern="^(pairwise|choices)$")
    from_name: str
    # choices: a choice value -> the data key of the candidate it names as best ...
    best: dict[str, str] = {}
    # ... or -> "tie" / "all_bad"
    verdicts: dict[str, str] = {}
    # the control naming the worst candidate (choice value -> data key); two candidates need none
    worst_from_name: str | None = None
    worst: dict[str, str] = {}
    content_from_name: str | None = None
    defect_from_name: str | None = None


class Mapping(_Strict):
    """The mapping file: which data keys hold the LQ reference and the candidates, how an answer
    reads, where the images are, and who the annotators are."""

    project: ProjectFields
    lq: str
    candidates: list[str] = Field(min_length=2, max_length=16)
    answer: AnswerMapping
    # URL prefix -> local folder, e.g. {"/data/local-files/?d=": "/srv/files/"}; http(s) URLs are fetched
    images: dict[str, str] = {}
    # Label Studio user id -> e-mail, for exports whose completed_by is only an id
    users: dict[str, str] = {}


@dataclass
class ImportResult:
    project_id: int
    tasks: int = 0
    sources_added: int = 0
    votes_added: int = 0
    votes_known: int = 0
    rejected: list[str] = field(default_factory=list)


def load_mapping(path: Path) -> Mapping:
    try:
        return Mapping.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise InvalidInput(f"the mapping file {path} is not usable: {exc}") from None


def _image(mapping: Mapping, reference: Any, base: Path) -> bytes:
    """The bytes an image reference of the export names."""
    if not isinstance(reference, str) or not reference:
        raise AnswerRejected(f"the image reference {reference!r:.80} is not a string")
    for prefix, folder in mapping.images.items():
        if reference.startswith(prefix):
            root = (base / folder).resolve()
            path = (root / unquote(reference[len(prefix) :])).resolve()
            if not path.is_relative_to(root):
                raise AnswerRejected(f"{reference!r} points outside {root}")
            try:
                return path.read_bytes()
            except OSError as exc:
                raise AnswerRejected(f"cannot read {path} ({exc.strerror})") from None
    if reference.startswith(("http://", "https://")):
        try:
            response = httpx.get(reference, timeout=60, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise AnswerRejected(f"cannot download {reference} ({exc})") from None
        return response.content
    raise AnswerRejected(f"no 'images' prefix of the mapping matches {reference!r:.120}")


def read_imported_answer(mapping: Mapping, result: list[Any], keys_to_ids: dict[str, int]) -> Answer:
    """An annotation of the imported project as a vote; AnswerRejected with the reason otherwise."""
    spec = mapping.answer
    values: dict[str, dict[str, Any]] = {}
    for region in result:
        if isinstance(region, dict) and isinstance(region.get("value"), dict):
            values[str(region.get("from_name"))] = region["value"]
    texts = {
        name: "\n".join(str(t) for t in values.get(name or "", {}).get("text", [])).strip()
        for name in (spec.content_from_name, spec.defect_from_name)
    }
    content, defect = texts.get(spec.content_from_name, ""), texts.get(spec.defect_from_name, "")
    if "\x00" in content + defect:
        raise AnswerRejected("a text holds a NUL character, which cannot be stored")
    chosen = values.get(spec.from_name)
    if chosen is None:
        raise AnswerRejected(f"the answer has no {spec.from_name!r}")
    candidates = [keys_to_ids[key] for key in mapping.candidates]
    if spec.type == "pairwise":
        side = chosen.get("selected")
        if side not in ("left", "right") or len(candidates) != 2:
            raise AnswerRejected(f"a pairwise answer selects 'left' or 'right' of two images, not {side!r}")
        best = candidates[0] if side == "left" else candidates[1]
        return Answer("pick", best, candidates[1] if side == "left" else candidates[0], content, defect)
    picked = chosen.get("choices")
    if not isinstance(picked, list) or len(picked) != 1:
        raise AnswerRejected(f"{spec.from_name!r} must hold one choice, not {picked!r:.80}")
    value = str(picked[0])
    if value in spec.verdicts:
        outcome = spec.verdicts[value]
        if outcome not in ("tie", "all_bad"):
            raise AnswerRejected(f"the verdict of {value!r} maps to {outcome!r}, not 'tie' or 'all_bad'")
        return Answer(outcome, None, None, content, defect)
    if value not in spec.best:
        raise AnswerRejected(f"unknown choice {value!r}: the mapping's 'best' and 'verdicts' do not name it")
    best = keys_to_ids[spec.best[value]]
    if spec.worst_from_name is None:
        if len(candidates) != 2:
            raise AnswerRejected("with more than two candidates the mapping needs 'worst_from_name'")
        worst = next(c for c in candidates if c != best)
    else:
        worst_choices = values.get(spec.worst_from_name, {}).get("choices", [])
        if len(worst_choices) != 1 or str(worst_choices[0]) not in spec.worst:
            raise AnswerRejected(
                f"{spec.worst_from_name!r} must hold one known choice, not {worst_choices!r:.80}"
            )
        worst = keys_to_ids[spec.worst[str(worst_choices[0])]]
    if best == worst:
        raise AnswerRejected("the best and the worst candidate are the same")
    return Answer("pick", best, worst, content, defect)


def _email(annotation: dict[str, Any], mapping: Mapping) -> str:
    by = annotation.get("completed_by")
    if isinstance(by, dict) and isinstance(by.get("email"), str) and by["email"]:
        return by["email"].strip().lower()
    ls_id = by.get("id") if isinstance(by, dict) else by
    if str(ls_id) in mapping.users:
        return mapping.users[str(ls_id)].strip().lower()
    raise AnswerRejected(
        f"Label Studio user {ls_id!r:.40} has no e-mail in the export or in the mapping's 'users'"
    )


def _user_id(runtime: Runtime, email: str) -> int:
    try:
        check_username(email)
    except DspoError as exc:
        raise AnswerRejected(f"the e-mail {email!r} cannot be a user name here: {exc}") from None
    with runtime.sessions() as session:
        user = session.scalars(select(User).where(User.username == email)).first()
        if user is None:
            user = User(username=email, password_hash=NO_PASSWORD, role="annotator")
            session.add(user)
            session.commit()
        return user.id


def _project(runtime: Runtime, mapping: Mapping, scale: int) -> int:
    with runtime.sessions() as session:
        found = session.scalars(select(Project).where(Project.name == mapping.project.name)).first()
        if found is not None:
            if found.n_candidates != len(mapping.candidates) or found.scale != scale:
                raise InvalidInput(
                    f"project {found.name!r} exists with N={found.n_candidates}, x{found.scale}; this "
                    f"import has N={len(mapping.candidates)}, x{scale}: choose another name"
                )
            return found.id
        fields = {
            "name": mapping.project.name,
            "instructions": mapping.project.instructions,
            "n_candidates": len(mapping.candidates),
            "overlap": mapping.project.overlap,
            "scale": scale,
            "generator": "labelstudio-import",
        }
        return create_project(session, runtime.settings, fields).id


def _candidate(runtime: Runtime, data: bytes) -> tuple[str, int, int]:
    try:
        image = decode_upload(data, max_pixels=runtime.settings.max_image_pixels)
    except ImageRejected as exc:
        raise AnswerRejected(str(exc)) from None
    return runtime.blobs.put(encode_png(image)), image.width, image.height


def _source_and_task(
    runtime: Runtime, project_id: int, mapping: Mapping, data: dict, base: Path, ls_id: Any
) -> tuple[int, dict[str, int], bool]:
    """The source, task and candidates of one Label Studio task (made on first import)."""
    lq = _image(mapping, data.get(mapping.lq), base)
    with runtime.sessions() as session:
        project = session.get(Project, project_id)
        assert project is not None
        try:
            source, existed = add_source(
                session,
                runtime.blobs,
                project,
                lq,
                filename=f"labelstudio-task-{ls_id}",
                kind="lq",
                max_pixels=runtime.settings.max_image_pixels,
            )
        except ImageRejected as exc:
            raise AnswerRejected(f"the LQ image: {exc}") from None
        if existed:
            rows = session.execute(
                select(Candidate.model, Candidate.id).where(Candidate.source_id == source.id)
            )
            task_id = session.scalars(select(Task.id).where(Task.source_id == source.id)).one()
            return task_id, {key: cid for key, cid in rows}, False
        assert source.width is not None and source.height is not None
        size = (source.width * project.scale, source.height * project.scale)
        stored = [_candidate(runtime, _image(mapping, data.get(key), base)) for key in mapping.candidates]
        for key, (_sha, width, height) in zip(mapping.candidates, stored, strict=True):
            if (width, height) != size:
                session.delete(source)
                session.commit()
                raise AnswerRejected(
                    f"candidate {key!r} is {width}x{height}, not x{project.scale} the LQ image: {size}"
                )
        ids = {}
        for position, (key, (sha, width, height)) in enumerate(zip(mapping.candidates, stored, strict=True)):
            candidate = Candidate(
                source_id=source.id,
                position=position,
                sha256=sha,
                width=width,
                height=height,
                generator="labelstudio-import",
                model=key,
                settings={},
                seed=0,
            )
            session.add(candidate)
            session.flush()
            ids[key] = candidate.id
        source.state = "ready"
        task = Task(
            project_id=project_id,
            source_id=source.id,
            instance_id=None,
            kind="image",
            required_votes=project.overlap,
            created_at=utcnow(),
        )
        session.add(task)
        session.commit()
        return task.id, ids, True


def _scale(runtime: Runtime, mapping: Mapping, tasks: list[dict], base: Path) -> int:
    """The SR factor: a candidate's width over the LQ image's, from the first task."""
    data = tasks[0].get("data") or {}
    lq = _candidate(runtime, _image(mapping, data.get(mapping.lq), base))
    first = _candidate(runtime, _image(mapping, data.get(mapping.candidates[0]), base))
    if first[1] % lq[1] or first[1] // lq[1] < 1:
        raise InvalidInput(
            f"the candidates ({first[1]} px wide) are not a whole multiple of the LQ image ({lq[1]} px)"
        )
    return first[1] // lq[1]


def import_export(runtime: Runtime, export_path: Path, mapping_path: Path) -> ImportResult:
    mapping = load_mapping(mapping_path)
    try:
        tasks = json.loads(export_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the export {export_path}: {exc}") from None
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise InvalidInput(f"{export_path} is not a Label Studio JSON export (a list of tasks)")
    base = mapping_path.parent
    try:
        scale = _scale(runtime, mapping, tasks, base)
    except AnswerRejected as exc:
        raise InvalidInput(f"the first task's images cannot be read: {exc}") from None
    result = ImportResult(_project(runtime, mapping, scale))
    for ls_task in tasks:
        data = ls_task.get("data") if isinstance(ls_task.get("data"), dict) else {}
        try:
            task_id, keys_to_ids, added = _source_and_task(
                runtime, result.project_id, mapping, data, base, ls_task.get("id")
            )
        except AnswerRejected as exc:
            result.rejected.append(f"task {ls_task.get('id')}: {exc}")
            continue
        result.tasks += 1
        result.sources_added += added
        for annotation in ls_task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled") is True:
                continue
            try:
                answer = read_imported_answer(mapping, annotation.get("result") or [], keys_to_ids)
                user_id = _user_id(runtime, _email(annotation, mapping))
            except AnswerRejected as exc:
                result.rejected.append(f"annotation {annotation.get('id')}: {exc}")
                continue
            vote = assign.VoteInput(
                outcome=answer.outcome,
                client_submission_id=f"lsimport-{annotation.get('id')}"[:64],
                best_candidate_id=answer.best_candidate_id,
                worst_candidate_id=answer.worst_candidate_id,
                content_text=answer.content_text,
                defect_text=answer.defect_text,
                shown_order=[keys_to_ids[key] for key in mapping.candidates],
            )
            with runtime.sessions() as session:
                try:
                    assign.submit_vote(
                        session, task_id=task_id, user_id=user_id, data=vote, now=utcnow(), allow_full=True
                    )
                    session.commit()
                    result.votes_added += 1
                except IntegrityError:  # imported before (or the user answered this task twice)
                    session.rollback()
                    result.votes_known += 1
                except DspoError as exc:
                    session.rollback()
                    result.rejected.append(f"annotation {annotation.get('id')}: {exc.message}")
    return result
