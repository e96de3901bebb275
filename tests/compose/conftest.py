"""The production stack of docker-compose.yml on a real Docker engine, one compose project per run.

The images are built FROM the offline Debian 12 base of ../shared/tools/docker-offline.sh through
compose.test.yml (no registry is reachable on the build machines); `bash scripts/docker-engine.sh`
installs and starts the engine and builds that base. Without an engine the tests skip with the reason,
except on CI (CI=true), where they fail. Everything the run made goes at the end (`down -v`, its
image tags); the build cache stays, so the next run builds in seconds."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import cannot_run

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("DSPO_TEST_DOCKER_BASE", "local/bookworm-base")
ADMIN_PASSWORD = "compose-admin-password"


@dataclass
class Stack:
    project: str
    env_file: Path
    log_dir: Path
    run: str
    url: str = ""

    @property
    def trainer_image(self) -> str:
        return f"dspo-test-{self.run}-trainer"

    def compose(
        self,
        *args: str,
        timeout: float = 900,
        check: bool = True,
        stdin: Path | None = None,
        stdout: Path | None = None,
    ) -> subprocess.CompletedProcess:
        """`docker compose ARGS` on this project; stdin/stdout from/to files for binary streams."""
        command = [
            "docker",
            "compose",
            "--project-name",
            self.project,
            "--project-directory",
            str(REPO),
            "--file",
            str(REPO / "docker-compose.yml"),
            "--file",
            str(REPO / "tests/compose/compose.test.yml"),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        with ExitStack() as files:
            streams = {
                "stdin": files.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL,
                "stdout": files.enter_context(stdout.open("wb")) if stdout else subprocess.PIPE,
            }
            result = subprocess.run(command, stderr=subprocess.PIPE, timeout=timeout, **streams)
        result.stdout = result.stdout.decode(errors="replace") if result.stdout is not None else ""
        result.stderr = result.stderr.decode(errors="replace")
        if check and result.returncode != 0:
            pytest.fail(
                f"`docker compose {' '.join(args)}` failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def timed(self, what: str, *args: str, timeout: float = 900) -> float:
        """Run a compose command, record how long it took in timings.txt, return the seconds."""
        start = time.monotonic()
        self.compose(*args, timeout=timeout)
        seconds = time.monotonic() - start
        with (self.log_dir / "timings.txt").open("a") as out:
            out.write(f"{what}: {seconds:.1f} s\n")
        return seconds

    def find_api(self) -> None:
        """The API's published port: an ephemeral one, chosen again whenever `api` starts."""
        port = self.compose("port", "api", "8000").stdout.strip().rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", service, check=False).stdout

    def wait_until_healthy(self, service: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            cid = self.compose("ps", "--quiet", service).stdout.strip()
            if cid:
                state = subprocess.run(
                    ["docker", "inspect", "--format", "{{.State.Health.Status}}", cid],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                if state == "healthy":
                    return
            assert time.monotonic() < deadline, f"{service} not healthy after {timeout} s"
            time.sleep(0.5)


def _engine_problem() -> str | None:
    """Why the compose tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI; `bash scripts/docker-engine.sh` installs the engine and compose"
    for command, what in (
        (["docker", "info"], "the Docker engine is not running"),
        (["docker", "compose", "version"], "`docker compose` (v2) is missing"),
        (["docker", "image", "inspect", BASE_IMAGE], f"the base image {BASE_IMAGE} is missing"),
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return f"{what} ({result.stderr.strip()[:200]}); `bash scripts/docker-engine.sh` sets it up"
    return None


def torch_wheel(folder: Path) -> None:
    """The trainer image's torch: the CPU wheel this machine's pip finds (an unpinned index would give
    the multi-GB CUDA build), put where the Dockerfile's WHEELS=dir reads it."""
    folder.mkdir(exist_ok=True)
    if not list(folder.glob("torch-2.13.0*.whl")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                str(folder),
                "torch==2.13.0",
            ],
            check=True,
            timeout=600,
        )


@pytest.fixture(scope="package")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A compose project of its own (name, image tags, settings); at the end its containers, volumes
    and image tags go, and its logs are kept."""
    problem = _engine_problem()
    if problem:
        cannot_run(problem)
    run = uuid.uuid4().hex[:10]
    log_dir = tmp_path_factory.mktemp("compose")
    env_file = log_dir / "test.env"
    # A random secret: the stack runs as in production (no development setting).
    env_file.write_text(
        "\n".join(
            [
                f"POSTGRES_PASSWORD={uuid.uuid4().hex}",
                f"DSPO_SECRET_KEY={uuid.uuid4().hex}{uuid.uuid4().hex}",
                f"APP_IMAGE=dspo-test-{run}-app",
                f"TRAINER_IMAGE=dspo-test-{run}-trainer",
                f"TEST_IMAGE_PREFIX=dspo-test-{run}",
                f"TEST_BASE_IMAGE={BASE_IMAGE}",
                f"ENV_FILE={env_file}",
                "DSPO_LEASE_SECONDS=60",
                # A killed worker's job is taken for dead after 30 s of silence (default 60): a shorter test.
                "DSPO_JOB_HEARTBEAT_SECONDS=5",
                "DSPO_JOB_STALE_SECONDS=30",
            ]
        )
        + "\n"
    )
    project = Stack(project=f"dspo-test-{run}", env_file=env_file, log_dir=log_dir, run=run)
    try:
        yield project
    finally:
        logs = project.compose("logs", "--no-color", "--timestamps", check=False).stdout
        (log_dir / "compose.log").write_text(logs)
        project.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        images = [f"dspo-test-{run}-{name}" for name in ("app", "trainer", "postgres", "redis")]
        subprocess.run(["docker", "image", "rm", "--force", *images], capture_output=True)
        timings = log_dir / "timings.txt"
        print(f"\ncompose logs in {log_dir}; {timings.read_text() if timings.exists() else ''}")


@pytest.fixture(scope="package")
def stack(compose_project: Stack) -> Stack:
    """The stack built and up (`up --wait`: every health check passes), its API port found. The
    trainer image (profile gpu) is built with the others: BuildKit builds their shared stages once and
    the rest side by side."""
    torch_wheel(REPO / ".docker-wheels")
    compose_project.timed("build (with the trainer)", "--profile", "gpu", "build")
    compose_project.timed("up --wait", "up", "--detach", "--wait", timeout=300)
    compose_project.find_api()
    return compose_project


@pytest.fixture(scope="package")
def admin_headers(stack: Stack) -> dict[str, str]:
    """The first admin, made as the README says: `docker compose exec api dspo user create`."""
    stack.compose(
        "exec",
        "-T",
        "api",
        "dspo",
        "user",
        "create",
        "admin",
        "--role",
        "admin",
        "--password",
        ADMIN_PASSWORD,
    )
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        response = client.post("/api/v1/auth/login", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}
