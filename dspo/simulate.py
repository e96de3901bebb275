"""Simulated annotators: accounts that answer a project's tasks through the real REST API, over HTTP,
as the task page does (lease with `next`, vote with a client submission id, skip, tie, texts), each
judging by an oracle (dspo.oracles) with its own noise, tie threshold, position bias, skip rate and
speed.

The simulator signs in as an admin to create the accounts and to read what annotators never see (the
HQ image an oracle compares against); each simulated annotator then uses only its own token and the
routes the page uses. docs/loop.md describes it."""

import argparse
import getpass
import io
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import httpx
import numpy as np
from PIL import Image

from dspo.oracles import Judgement, Oracle, OracleError, OracleQuery, judge, load_oracle

log = logging.getLogger(__name__)

API = "/api/v1"
RETRIES = 5  # an answer is sent again (same submission id: safe) after a transport error or a 5xx/429
# What a simulated annotator writes when the project requires a text that the oracle did not give.
FALLBACK_CONTENT = "simulated annotator: the region"
FALLBACK_DEFECT = "simulated annotator: less faithful than the others"


@dataclass(frozen=True)
class Profile:
    """How one simulated annotator answers. Noise, tie threshold and position bias are in the
    oracle's score unit (dB for the built-in `fidelity`)."""

    noise: float = 0.5  # standard deviation of the Gaussian noise added to every score it sees
    tie_threshold: float = 0.1  # "no visible difference" when the best and worst differ by less
    position_bias: float = 0.0  # added to the score of the candidate shown first (left)
    skip_rate: float = 0.0  # probability of skipping a task
    seconds_per_task: float = 0.0  # time it takes per task (waited for real; 0 answers at once)


def profiles(base: Profile, n: int, *, spread: float, seed: int) -> list[Profile]:
    """n profiles around `base`: each setting multiplied by its own factor drawn uniformly from
    [1 - spread, 1 + spread] (seeded), so the annotators differ as people do; spread 0 makes n copies."""
    rng = np.random.default_rng([seed, 1])

    def draw(value: float) -> float:
        return float(value * rng.uniform(1 - spread, 1 + spread)) if spread else value

    return [
        Profile(
            noise=draw(base.noise),
            tie_threshold=draw(base.tie_threshold),
            position_bias=draw(base.position_bias),
            skip_rate=min(1.0, draw(base.skip_rate)),
            seconds_per_task=draw(base.seconds_per_task),
        )
        for _ in range(n)
    ]


@dataclass
class AnnotatorReport:
    username: str
    profile: Profile
    picks: int = 0
    ties: int = 0
    skips: int = 0
    refused: list[str] = field(default_factory=list)  # answers the server refused, with its reason


@dataclass(frozen=True)
class Decision:
    """What an annotator answers, from the scores it perceived (in the order shown)."""

    outcome: str  # pick | tie | skip
    best: int | None = None  # indexes into the shown candidates
    worst: int | None = None


def decide(scores: list[float], profile: Profile, rng: np.random.Generator) -> Decision:
    """Noise on every score and the position bias on the first shown; a tie when best and worst are
    closer than the tie threshold; else the best and the worst as perceived. (Skips are decided
    before the oracle is asked: see Simulation._decide.)"""
    perceived = np.asarray(scores, dtype=float) + rng.normal(0.0, profile.noise, len(scores))
    perceived[0] += profile.position_bias
    if perceived.max() - perceived.min() < profile.tie_threshold:
        return Decision("tie")
    return Decision("pick", best=int(perceived.argmax()), worst=int(perceived.argmin()))


class ApiError(RuntimeError):
    pass


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.is_error:
        raise ApiError(f"{what}: the server answered {response.status_code}: {response.text[:300]}")
    return response


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post(f"{API}/auth/login", data={"username": username, "password": password})
    return _check(response, f"login as {username}").json()["access_token"]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0


class ImageCache:
    """Images by URL, fetched once for all the simulated annotators (every URL names fixed bytes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, Any] = {}

    def get(
        self, client: httpx.Client, url: str, decode: Callable[[bytes], Any], *, optional: bool = False
    ) -> Any:
        with self._lock:
            if url in self._found:
                return self._found[url]
        response = client.get(url)
        if optional and response.status_code == 404:
            value = None
        else:
            value = decode(_check(response, f"GET {url}").content)
        with self._lock:
            self._found[url] = value
        return value


class Simulation:
    """Simulated annotators on one project of the server at base_url; `admin_token` is an admin's."""

    def __init__(
        self,
        base_url: str,
        project_id: int,
        admin_token: str,
        oracle: Oracle,
        annotator_profiles: list[Profile],
        *,
        seed: int = 0,
        prefix: str = "sim",
        timeout: float = 60.0,
    ) -> None:
        self.base_url, self.project_id, self.oracle = base_url.rstrip("/"), project_id, oracle
        self.profiles, self.seed, self.prefix, self.timeout = annotator_profiles, seed, prefix, timeout
        self.admin = self._client(admin_token)
        self.images = ImageCache()
        self._prompts: dict[int, str] = {}
        self._prompts_lock = threading.Lock()
        self.project = _check(self.admin.get(f"{API}/projects/{project_id}"), "read the project").json()

    def _client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)

    def run(self) -> list[AnnotatorReport]:
        """Create (or reset) the accounts, then let every annotator answer until nothing is left for it."""
        accounts = [self._account(i) for i in range(len(self.profiles))]
        reports = [
            AnnotatorReport(name, profile) for (name, _), profile in zip(accounts, self.profiles, strict=True)
        ]
        with ThreadPoolExecutor(max(1, len(accounts)), thread_name_prefix="dspo-sim") as pool:
            futures = [
                pool.submit(self._annotate, number, password, report)
                for number, ((_, password), report) in enumerate(zip(accounts, reports, strict=True))
            ]
            for future in futures:
                future.result()
        return reports

    def close(self) -> None:
        self.admin.close()

    def _account(self, number: int) -> tuple[str, str]:
        """An annotator account named <prefix>-p<project>-<number>, with a fresh password, a member of
        the project."""
        username, password = f"{self.prefix}-p{self.project_id}-{number}", secrets.token_urlsafe(16)
        body = {"username": username, "password": password, "role": "annotator"}
        response = self.admin.post(f"{API}/users", json=body)
        if response.status_code == 409:  # made by an earlier run: give it this run's password
            users = _check(self.admin.get(f"{API}/users"), "list the users").json()
            [user] = [u for u in users if u["username"] == username]
            if user["role"] != "annotator":
                raise ApiError(f"{username} exists and is an {user['role']}: choose another --prefix")
            change = {"password": password, "is_active": True}
            _check(self.admin.patch(f"{API}/users/{user['id']}", json=change), f"reset {username}")
        else:
            user = _check(response, f"create {username}").json()
        member = self.admin.put(f"{API}/projects/{self.project_id}/members/{user['id']}")
        _check(member, f"add {username} to project {self.project_id}")
        return username, password

    def _annotate(self, number: int, password: str, report: AnnotatorReport) -> None:
        rng = np.random.default_rng([self.seed, 2, number])
        with self._client() as anonymous:
            token = login(anonymous, report.username, password)
        seen: set[str] = set()  # what this annotator's browser would have cached
        with self._client(token) as client:
            idle = 0
            while True:
                response = _check(self._post(client, f"{API}/projects/{self.project_id}/next"), "next task")
                if response.status_code == 204:
                    if not self._left_for(client):
                        return
                    # Open tasks remain whose slots others' leases hold: one of them may skip.
                    idle += 1
                    time.sleep(min(1.0, 0.05 * idle))
                    continue
                idle = 0
                task = response.json()
                shown_at = time.monotonic()
                self._look(client, task, seen)
                decision = self._decide(client, task, report.profile, rng)
                wait = report.profile.seconds_per_task - (time.monotonic() - shown_at)
                if wait > 0:
                    time.sleep(wait)
                body = self._body(task, decision, shown_at)
                self._send(client, task["id"], body, report)

    def _look(self, client: httpx.Client, task: dict[str, Any], seen: set[str]) -> None:
        """Load what the task page shows (the LQ reference, the candidates, the mask), as its browser
        would: each URL once, as the page asks for it. The oracle reads the full images (below)."""
        urls = [f"{task['lq_url']}?method=bicubic", *([task["mask_url"]] if task["mask_url"] else [])]
        suffix = "?outline=false" if task["kind"] == "instance" else ""
        urls += [f"{c['image_url']}{suffix}" for c in task["candidates"]]
        for url in urls:
            if url not in seen:
                _check(client.get(url), f"GET {url}")
                seen.add(url)

    def _left_for(self, client: httpx.Client) -> int:
        """Open tasks this annotator has neither answered nor skipped."""
        response = client.get(f"{API}/projects/{self.project_id}/progress")
        return int(_check(response, "progress").json()["left_for_you"])

    def _query(self, client: httpx.Client, task: dict[str, Any]) -> OracleQuery:
        ids = [c["id"] for c in task["candidates"]]
        candidates = [self.images.get(client, f"{API}/images/candidates/{i}", _pixels) for i in ids]
        width, height = task["image_size"]
        hq = self.images.get(
            self.admin, f"{API}/images/sources/{task['source_id']}/hq", _pixels, optional=True
        )
        return OracleQuery(
            lq=self.images.get(client, f"{API}/images/sources/{task['source_id']}/lq", _pixels),
            candidates=candidates,
            # The LQ image was made from the HQ one cropped to a multiple of the scale, at its top left.
            hq=None if hq is None else hq[:height, :width],
            mask=None if task["mask_url"] is None else self.images.get(client, task["mask_url"], _mask),
            box=tuple(task["box"]),
            scale=self.project["scale"],
            kind=task["kind"],
            prompt=self._prompt(task["source_id"]),
            candidate_ids=ids,
        )

    def _prompt(self, source_id: int) -> str:
        """The source's prompt (admin's list of sources, read again when a source is new to it)."""
        with self._prompts_lock:
            if source_id not in self._prompts:
                offset = 0
                while page := _check(
                    self.admin.get(
                        f"{API}/projects/{self.project_id}/sources", params={"offset": offset, "limit": 1000}
                    ),
                    "list the sources",
                ).json():
                    self._prompts |= {s["id"]: s["prompt"] for s in page}
                    offset += len(page)
            return self._prompts.get(source_id, "")

    def _decide(
        self, client: httpx.Client, task: dict[str, Any], profile: Profile, rng: np.random.Generator
    ) -> tuple[Decision, Judgement | None]:
        if rng.random() < profile.skip_rate:
            return Decision("skip"), None
        judgement = judge(self.oracle, self._query(client, task))
        return decide(list(judgement.scores), profile, rng), judgement

    def _body(
        self, task: dict[str, Any], decided: tuple[Decision, Judgement | None], shown_at: float
    ) -> dict:
        decision, judgement = decided
        body: dict[str, Any] = {
            "outcome": decision.outcome,
            "lead_time_ms": round((time.monotonic() - shown_at) * 1000),
            "client_submission_id": uuid.uuid4().hex,
        }
        if decision.outcome == "skip" or judgement is None:
            return body
        # The project's text requirements hold for regions and images, not for evaluation answers.
        needs_texts = task["kind"] != "evaluation"
        content = judgement.content_text or (
            FALLBACK_CONTENT if needs_texts and self.project["require_content"] else ""
        )
        body["content_text"] = content[:500]
        if decision.outcome == "pick":
            ids = [c["id"] for c in task["candidates"]]
            assert decision.best is not None and decision.worst is not None
            body["best_candidate_id"], body["worst_candidate_id"] = ids[decision.best], ids[decision.worst]
            defect = judgement.defect_text or (
                FALLBACK_DEFECT if needs_texts and self.project["require_defect"] else ""
            )
            body["defect_text"] = defect[:500]
        return body

    def _send(
        self, client: httpx.Client, task_id: int, body: dict[str, Any], report: AnnotatorReport
    ) -> None:
        """Send the answer as the page does. A refused answer (4xx) is noted and the task skipped, as a
        person would move on; without the skip `next` would offer the same leased task again."""
        response = self._post(client, f"{API}/tasks/{task_id}/vote", body)
        if response.status_code in (200, 201):
            counter = {"pick": "picks", "tie": "ties", "skip": "skips"}[body["outcome"]]
            setattr(report, counter, getattr(report, counter) + 1)
            return
        report.refused.append(f"task {task_id}: {response.status_code} {response.text[:200]}")
        if body["outcome"] == "skip":
            raise ApiError(f"task {task_id}: even a skip was refused: {response.text[:300]}")
        self._send(client, task_id, {"outcome": "skip", "client_submission_id": uuid.uuid4().hex}, report)

    def _post(self, client: httpx.Client, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """POST with the page's retry rule: the same body (so the same submission id) again after a
        transport error, a 5xx or a 429, so that a retry whose first attempt did arrive counts once."""
        for attempt in range(RETRIES):
            try:
                response = client.post(url, json=body)
            except httpx.TransportError as exc:
                log.warning("%s: %s; sending again", url, exc)
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
            time.sleep(0.2 * 2**attempt)
        raise ApiError(f"{url}: no answer after {RETRIES} attempts")


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        oracle = load_oracle(args.oracle)
    except OracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("DSPO_TOKEN")
    if not token:
        password = os.environ.get("DSPO_ADMIN_PASSWORD") or getpass.getpass(
            f"password for {args.admin_user}: "
        )
        with httpx.Client(base_url=args.url, timeout=60) as client:
            token = login(client, args.admin_user, password)
    chosen = profiles(profile_from_args(args), args.annotators, spread=args.spread, seed=args.seed)
    simulation = Simulation(args.url, args.project, token, oracle, chosen, seed=args.seed, prefix=args.prefix)
    try:
        reports = simulation.run()
    except (ApiError, OracleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        simulation.close()
    columns = ("noise", 6), ("tie", 6), ("bias", 6), ("skip", 5), ("picks", 6), ("ties", 5), ("skips", 6)
    print(f"{'annotator':<24} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for r in reports:
        p = r.profile
        print(
            f"{r.username:<24} {p.noise:>6.3f} {p.tie_threshold:>6.3f} {p.position_bias:>6.3f} "
            f"{p.skip_rate:>5.2f} {r.picks:>6} {r.ties:>5} {r.skips:>6}"
        )
        for refusal in r.refused:
            print(f"  refused: {refusal}")
    return 0


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sim = commands.add_parser(
        "simulate",
        help="simulated annotators answer a project's tasks over the REST API, judged by an oracle",
        description=__doc__.split("\n\n")[0],
    )
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    sim.add_argument("--project", type=int, required=True, help="project id")
    sim.add_argument("--annotators", type=int, default=3, help="how many (default %(default)s)")
    sim.add_argument(
        "--oracle",
        default="fidelity",
        help="an installed oracle (dspo.oracles entry point) or module:callable",
    )
    sim.add_argument("--token", help="an admin's API token (default: DSPO_TOKEN, else --admin-user)")
    sim.add_argument(
        "--admin-user",
        default="admin",
        help="admin to sign in as; password from DSPO_ADMIN_PASSWORD or asked",
    )
    sim.add_argument("--prefix", default="sim", help="account names: PREFIX-pPROJECT-N (default %(default)s)")
    sim.add_argument("--seed", type=int, default=0)
    add_profile_flags(sim)
    sim.set_defaults(func=cmd_simulate)


def add_profile_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the annotators' Profile and their spread (`dspo simulate`, bench/loop.py)."""
    default = Profile()
    parser.add_argument("--noise", type=float, default=default.noise, help="score noise, std (oracle units)")
    parser.add_argument("--tie-threshold", type=float, default=default.tie_threshold, help="oracle units")
    parser.add_argument(
        "--position-bias", type=float, default=default.position_bias, help="bonus for the first shown"
    )
    parser.add_argument("--skip-rate", type=float, default=default.skip_rate)
    parser.add_argument("--seconds-per-task", type=float, default=default.seconds_per_task)
    parser.add_argument(
        "--spread",
        type=float,
        default=0.5,
        help="each annotator's settings are the above times its own factor in [1-spread, 1+spread] "
        "(default %(default)s)",
    )


def profile_from_args(args: argparse.Namespace) -> Profile:
    return Profile(**{f.name: getattr(args, f.name) for f in fields(Profile)})
