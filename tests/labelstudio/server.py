"""A real Label Studio server for the bridge's tests and benchmark (bench/labelstudio.py).

Label Studio pins a redis client older than Celery's, so it lives in a virtual environment of its
own, installed once per version under ~/.cache/dspo-labelstudio/<version> (DSPO_LABELSTUDIO_CACHE
moves it; CI keeps that folder between runs) and reused after. Each test session starts it on a free
127.0.0.1 port with a fresh data folder, an admin whose API token is known, and annotators made with
its Django models (the community edition has no API to add users with tokens)."""

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
CACHE_ROOT = Path(os.environ.get("DSPO_LABELSTUDIO_CACHE", Path.home() / ".cache" / "dspo-labelstudio"))
ADMIN_EMAIL = "ls-admin@example.com"
START_TIMEOUT = 600  # the first start migrates a fresh database: about 25 s on a quiet machine

# Run inside Label Studio's venv: create annotators, each with a legacy API token, in its organisation.
MAKE_USERS = """
import json, os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
import django
django.setup()
from organizations.models import Organization
from rest_framework.authtoken.models import Token
from users.models import User
organization = Organization.objects.first()
for email, token in json.loads(sys.argv[1]):
    user = User.objects.create_user(email=email, username=email, password=token)
    organization.add_user(user)
    user.active_organization = organization
    user.save()
    Token.objects.filter(user=user).delete()
    Token.objects.create(user=user, key=token)
    print(email, user.id)
"""


def _install() -> Path:
    """Label Studio's venv (installed on first use, under a lock); the path of its python."""
    root = CACHE_ROOT / LABEL_STUDIO_VERSION
    python, done = root / "venv" / "bin" / "python", root / "installed.json"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / f"{LABEL_STUDIO_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it right now
        if not done.exists():
            shutil.rmtree(root / "venv", ignore_errors=True)
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", f"label-studio=={LABEL_STUDIO_VERSION}"],
                check=True,
                timeout=3600,
            )
            seconds = round(time.monotonic() - started)
            done.write_text(json.dumps({"version": LABEL_STUDIO_VERSION, "install_seconds": seconds}))
            print(f"installed Label Studio {LABEL_STUDIO_VERSION} in {seconds} s")
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str  # the admin's
    python: Path
    env: dict[str, str]
    log: Path

    def make_users(self, emails: list[str]) -> dict[str, tuple[int, str]]:
        """New annotators in Label Studio: e-mail -> (their Label Studio id, API token)."""
        tokens = {email: secrets.token_hex(20) for email in emails}
        done = subprocess.run(
            [str(self.python), "-c", MAKE_USERS, json.dumps(list(tokens.items()))],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        ids = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return {email: (int(ids[email]), token) for email, token in tokens.items()}


@contextmanager
def running_labelstudio(data: Path) -> Iterator[LabelStudioServer]:
    """Label Studio on a free 127.0.0.1 port with the fresh data folder `data`, stopped on the way out."""
    python = _install()
    port, token = _free_port(), secrets.token_hex(20)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DSPO_", "VIRTUAL_ENV"))},
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # else the token above gets 401
        "SSRF_PROTECTION_ENABLED": "false",  # else Label Studio refuses webhooks to 127.0.0.1
    }
    log = data / "label-studio.log"
    command = [str(python.parent / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["-p", str(port), "--data-dir", str(data)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started, deadline = time.monotonic(), time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Label Studio exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not start:\n{log.read_text()[-3000:]}")
            try:
                answer = httpx.get(f"{url}/api/projects", headers={"Authorization": f"Token {token}"})
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"Label Studio {LABEL_STUDIO_VERSION} started in {time.monotonic() - started:.0f} s")
        yield LabelStudioServer(url, token, python, env, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
