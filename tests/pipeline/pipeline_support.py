"""Helpers of the pipeline tests: a real webhook receiver on loopback and a real API process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from _support.processes import NO_COMPILE_CACHE
from _support.processes import free_port as free_port  # re-exported to the pipeline tests

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
TF_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """An HTTP server on loopback recording every POST; answers from ``script`` then 200."""

    url: str
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, check: Callable[[list[Received]], bool], timeout: float = 60.0) -> list[Received]:
        """Wait until ``check(requests)`` holds; fail with what arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.requests)
            if check(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"receiver never saw what was expected; got "
                             f"{[(r.path, r.event.get('type')) for r in got]}")


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    """Run a :class:`Receiver` in a thread for the block."""
    rec = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rec.lock:
                rec.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                             body, time.monotonic()))
                code = rec.script.pop(0) if rec.script else 200
            self.send_response(code)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    with loopback_server(Handler) as rec.url:
        yield rec


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port in a thread for the block; yield its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait_finished(url: str, job_id: str, headers: dict[str, str], timeout: float = 300
                  ) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job ends; return it."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@dataclass
class Api:
    """A ``kiln-service serve`` process this test started."""

    url: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the process and wait for ``/readyz``."""
        port = self.url.rsplit(":", 1)[1]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(BIN / "kiln-service"), "serve", "--port", port],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_ready(self.url, self.proc, self.log)

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing is flushed or finished)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Wait for ``/readyz`` to answer 200; fail with the log if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service never became ready:\n{log.read_text()[-3000:]}")


def api_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """This environment without KILN_* settings, plus an embedded data dir and ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(data_dir), KILN_AUTH="off", KILN_WEBHOOK_POLL_SECONDS="0.1",
               **NO_COMPILE_CACHE)
    env.update(overrides)
    return env


#: the trace context the test's request arrives with (the API continues it)
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS10cmFjZS10ZXN0LTEyMzQ="


@dataclass
class JobRun:
    """What one real job's life left: its id, the key used, the three processes' logs, the spans."""

    job_id: str
    key: str
    api_log: Path
    worker_log: Path
    job_log: str
    traces: Any
    """The :class:`otlp_support.OtlpReceiver` the processes exported to."""
