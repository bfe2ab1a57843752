"""A local tail server for a run: `edgesplit serve PLAN` in a subprocess on 127.0.0.1, and its token file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from edgesplit.errors import EdgesplitError
from edgesplit.model.intake import is_factory

__all__ = ["served", "write_secret"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(plan_path: Path, token_file: Path, log_path: Path, ready_s: float = 120.0,
           model: str | None = None) -> Iterator[str]:
    """`edgesplit serve PLAN` in a subprocess on 127.0.0.1; yields its URL once /readyz answers, stops it after.

    ``model`` is passed as `--model` when it is a ``module:factory``: the plan the pipeline wrote names the run
    config's factory, and the server builds a factory only when told to on its command line."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", str(plan_path), "--port", str(port),
                                    "--token-file", str(token_file), "--log-level", "warning",
                                    *(["--model", model] if model and is_factory(model) else [])],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + ready_s
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                    raise EdgesplitError(f"the server exited before it was ready: {tail[0]} (log: {log_path})")
                try:
                    if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EdgesplitError(f"the server was not ready after {ready_s:.0f} s (log: {log_path})")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()  # SIGTERM: the server finishes what is in flight and exits
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to a new file at ``path`` that is 0600 from its creation (never readable by others, not even
    for a moment); an old file or link there is removed first, and a link is never followed."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path
