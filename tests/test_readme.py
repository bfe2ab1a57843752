"""The README's commands work as written: every `$ ` line of its console blocks runs, in order, in a fresh folder.

`edgesplit serve` lines start a server in the background (waited for on /readyz) that stops when the block
ends; every other command must exit 0. This is what a newcomer pastes; if it breaks, the README is wrong.

A server is the installed `edgesplit` from PATH in a shell, as pasted. A plain `edgesplit ARGS` line (no pipe,
redirection or `&&`) runs through the same entry point in this process (``edgesplit_in_process``: its exit code,
a new interpreter's threads and warnings) and a plain `python -c CODE` line runs CODE here, in the folder: each
saves a new interpreter's seconds of imports; any other line goes to bash. An `edgesplit` line that a block before ran
on the same folder contents (the same train and plan in two blocks) is not run again: its output files are copied.
A server's output goes to a file beside the folder (``_start_server`` says why), and no server outlives its block.
"""

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_cli import edgesplit_in_process

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


def _words(command: str) -> list[str] | None:
    """A line's words as the shell splits them (comments dropped), or None when it pipes, redirects, chains
    (`&&`, `||`, `;`) or backgrounds (`&`): such a line is the shell's to run."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    return None if any(set(word) <= set("();<>|&") for word in words) else words


def _run(command: str, folder: Path, env: dict) -> subprocess.CompletedProcess:
    """One line, run in the folder: a plain `edgesplit` or `python -c` line in this process, any other in bash."""
    words = _words(command)
    if words and words[0] == "edgesplit":
        return edgesplit_in_process(*words[1:], cwd=folder, timeout_s=600)
    if words and words[:2] == ["python", "-c"] and len(words) == 3:
        with contextlib.chdir(folder):
            exec(compile(words[2], f"$ {command}", "exec"), {"__name__": "__main__"})  # an error fails the test
        return subprocess.CompletedProcess(words, 0, "", "")
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)


# (line, the folder's contents before it) → the files it wrote or changed, with their modes (None: removed).
_RAN: dict[tuple[str, str], dict[str, tuple[bytes, int] | None]] = {}


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(contents: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in contents.items():
        digest.update(b"%d:%s%d:" % (len(name), name.encode(), len(data)) + data)
    return digest.hexdigest()


def _start_server(command: str, folder: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start a `serve` line in a shell of its own, its output to ``log``, and wait for /readyz.

    The output goes to a file, not a pipe nobody reads: a server logs a JSON line per request, and once a pipe's
    64 kB filled, it blocked writing the next one and the client timed out into its fallback (a block's 300
    requests then took 20-200 s instead of about 2, and a stuck server outlived the test, port and all)."""
    port = int(re.search(r"--port (\d+)", command).group(1))
    with open(log, "wb") as output:
        process = subprocess.Popen(command.rstrip("& "), shell=True, cwd=folder, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{command!r} exited: {log.read_text(errors='replace')[-2000:]}"
        try:
            scheme = "https" if "--tls-cert" in command else "http"  # readiness only: the README's client verifies
            if httpx.get(f"{scheme}://127.0.0.1:{port}/readyz", timeout=1, verify=False).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{command!r} was not ready in 120 s")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's shell and the server it started, then wait until the whole group is gone (SIGKILL
    after 30 s), so no server outlives its block."""
    group = server.pid  # start_new_session: the shell leads a group of its own
    os.killpg(group, signal.SIGTERM)
    server.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(console_blocks(README.read_text()))))
def test_every_readme_console_block_runs(tmp_path, tmp_path_factory, index):
    commands = console_blocks(README.read_text())[index]
    logs = tmp_path_factory.mktemp(f"readme-block{index}-servers")  # beside the folder, not in it
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONPATH": str(ROOT / "tests")}
    servers = []
    try:
        for command in commands:
            if command.startswith("edgesplit serve"):
                servers.append(_start_server(command, tmp_path, env, logs / f"server{len(servers)}.log"))
                continue
            before = _contents(tmp_path)
            # Only `edgesplit` lines (a token line is random), while no server runs: then what the line does depends
            # on nothing but the line and the folder.
            words = _words(command)
            key = None if servers or not words or words[0] != "edgesplit" else (command, _digest(before))
            if key in _RAN:  # the same line on the same files, in a block before: its outputs, not a rerun
                for name, written in _RAN[key].items():
                    path = tmp_path / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if written is None:
                        path.unlink()
                    else:
                        path.write_bytes(written[0])
                        path.chmod(written[1])
                continue
            result = _run(command, tmp_path, env)
            assert result.returncode == 0, f"$ {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            if key is not None:
                after = _contents(tmp_path)
                _RAN[key] = {**{name: (data, (tmp_path / name).stat().st_mode & 0o777) for name, data in after.items()
                                if before.get(name) != data},
                             **{name: None for name in before.keys() - after.keys()}}
    finally:
        for server in servers:
            _stop(server)
