"""The server's memory while it refuses a large request body sent without a token.

Starts ``dspo serve`` itself (SQLite in a temp dir, one worker, as bench/api.py does), measures the
resident memory of its process tree at idle, then sends a JSON body of ``--mb`` megabytes to
``POST /api/v1/projects`` without credentials, twice: with a Content-Length header (refused from the
header alone) and chunked (refused once the streamed bytes pass the route's limit). While each request
is under way the server's RSS is sampled every 10 ms; the table shows the answer and the peak RSS above
idle. The client keeps sending until the server answers or closes the connection.

    python -m bench.body_limit            # 300 MB
    python -m bench.body_limit --mb 1000
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench.api import serve, sqlite_database

CHUNK = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn workers), from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry) == pid or int(fields.get("PPid", "0").strip()) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return total


class Sampler:
    """The peak RSS of the server's process tree while it runs (every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def send_body(port: int, size: int, *, chunked: bool) -> tuple[str, int, float]:
    """Send a `size`-byte JSON body without a token; returns (status line, bytes sent, seconds until
    the answer began)."""
    head = f"POST /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    answer = bytearray()
    answered_at: list[float] = []
    sock = socket.create_connection(("127.0.0.1", port))

    def read() -> None:
        try:
            while data := sock.recv(65536):
                answered_at.append(time.perf_counter())
                answer.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start, sent = time.perf_counter(), 0
    body = b'{"name": "' + b"x" * (CHUNK - 10)
    try:
        sock.sendall(head.encode())
        while sent < size and not answer:
            piece = body if sent == 0 else b"x" * CHUNK
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
    except OSError:
        pass  # the server answered and closed the connection: the rest of the body is not wanted
    reader.join(timeout=30)
    elapsed = (answered_at[0] if answered_at else time.perf_counter()) - start
    sock.close()
    status = bytes(answer).split(b"\r\n", 1)[0].decode(errors="replace") or "(no answer)"
    return status, sent, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the body in MB (10^6 bytes)")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="dspo-bench-") as folder, sqlite_database() as url:
        with serve(url, workers=1, workdir=Path(folder)) as server:
            pid, port = server.process.pid, int(server.base_url.rsplit(":", 1)[1])
            time.sleep(1)
            idle = rss_bytes(pid)
            print(f"server RSS at idle: {idle / 2**20:.1f} MiB")
            print("| body | answer | sent before the answer | time to the answer | peak RSS above idle |")
            print("|---|---|---|---|---|")
            for chunked in (False, True):
                with Sampler(pid) as sampler:
                    status, sent, seconds = send_body(port, size, chunked=chunked)
                    time.sleep(0.2)
                framing = "chunked" if chunked else "Content-Length"
                print(
                    f"| {args.mb} MB JSON, {framing}, no token | {status} | {sent / 1e6:.1f} MB | "
                    f"{seconds * 1000:.0f} ms | {(sampler.peak - idle) / 2**20:.1f} MiB |"
                )


if __name__ == "__main__":
    main()
