"""The README's commands work as written: every `$ ` line of its console blocks runs, in order, in a fresh folder.

`edgesplit serve` lines start a server in the background (waited for on /readyz) that stops when the block
ends; every other command must exit 0. This is what a newcomer pastes; if it breaks, the README is wrong.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def console_blocks(text: str) -> list[list[str]]:
    """The commands of each ```console block: `$ ` lines, with backslash continuations joined."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        commands, pending = [], None
        for line in body.splitlines():
            if pending is not None:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:].strip()
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
            else:
                commands.append(pending)
                pending = None
        blocks.append(commands)
    return blocks


def test_the_readme_has_console_blocks_that_use_every_verb():
    commands = [c for block in console_blocks(README.read_text()) for c in block]
    verbs = {m.group(1) for c in commands for m in [re.match(r"edgesplit (\w+)", c)] if m}
    assert verbs >= {"train", "profile", "split", "compress", "plan", "audit", "serve", "infer", "report", "run"}
    documented = set(re.findall(r"^\| `edgesplit (\w+)", README.read_text(), flags=re.M))
    assert documented >= verbs | {"demo", "zoo"}


def _start_server(command: str, folder: Path, env: dict) -> subprocess.Popen:
    port = int(re.search(r"--port (\d+)", command).group(1))
    process = subprocess.Popen(command.rstrip("& "), shell=True, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{command!r} exited: {process.stderr.read().decode()[-2000:]}"
        try:
            scheme = "https" if "--tls-cert" in command else "http"  # readiness only: the README's client verifies
            if httpx.get(f"{scheme}://127.0.0.1:{port}/readyz", timeout=1, verify=False).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{command!r} was not ready in 120 s")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(console_blocks(README.read_text()))))
def test_every_readme_console_block_runs(tmp_path, index):
    commands = console_blocks(README.read_text())[index]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONPATH": str(ROOT / "tests")}
    servers = []
    try:
        for command in commands:
            if command.startswith("edgesplit serve"):
                servers.append(_start_server(command, tmp_path, env))
                continue
            result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"$ {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)  # the shell and the server it started
            server.wait(30)
