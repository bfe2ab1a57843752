"""Emulate a slow network link so that split-inference transfers can be measured over real sockets.

Two kinds of link share one client interface (``link.client.request(payload, response_bytes)``):

* :class:`RateLimitedLink`, kind ``"netns-tbf"``: a fresh network namespace joined to the host by a veth pair,
  with a token-bucket filter (``tc qdisc ... tbf``) on each end. The host is the device (client), the
  namespace is the server. The kernel's TCP does the real work: segmentation, headers, ACKs, congestion
  control. It needs root, ``ip`` and ``tc``; :func:`link_emulation_unavailable` says why it cannot run.
* :class:`PacedSocketLink`, kind ``"paced-loopback"``: the fallback without privileges. Client and echo server
  talk over 127.0.0.1 and each paces its own sends in 16 KB chunks, so that bytes cross the socket at the
  nominal rate on average. It has no per-packet header cost and no TCP dynamics.

:func:`open_link` picks the better one available and :func:`measure_transfer` times requests over either.

The measurement protocol has no pickle: a frame is an 8-byte big-endian length followed by that many raw
bytes. A request frame's body starts with 8 bytes (big-endian) saying how many bytes the server must send
back; the server answers each request with one frame of that many zero bytes. Frames longer than
:data:`MAX_FRAME` are refused by closing the connection before reading them.

This file imports only the standard library, so that it can run as a script in a namespace without
importing the package (whose ``__init__`` imports torch, which takes seconds).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import ipaddress
import itertools
import math
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

HEADER = struct.Struct(">Q")
MAX_FRAME = 64 * 2**20
PACE_CHUNK = 16 * 1024
_IO_CHUNK = 256 * 1024
_ZEROS = memoryview(bytes(_IO_CHUNK))  # response bodies are sent from this block, never allocated per request

# tbf parameters, chosen by measurement (see _tbf_args).
_MTU_FRAME = 1514  # the veth MTU (1500) plus the 14-byte Ethernet header that tbf counts
_BURST_SECONDS = 0.0005
_QUEUE_SECONDS = 0.2

_ADDRESS_POOL = ipaddress.ip_network("10.128.0.0/9")  # carved into one /30 per link
_LINK_NAME = re.compile(r"es(\d+)x\d+")
# veth names add one character and Linux allows 15. The first character is a letter or digit, so that ip and tc
# never read a name as an option, and a name is never "." or "..", which are paths in /run/netns, not namespaces.
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,13}")


class LinkEmulationError(RuntimeError):
    """A namespace, veth or qdisc that could not be created, or an echo server that did not start."""


class ProtocolError(ConnectionError):
    """A peer that broke the framing: closed mid-frame or answered with the wrong size."""


# --- framing -------------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int, *, eof_ok: bool = False) -> bytes | None:
    """Exactly ``n`` bytes (small reads only); None on a clean EOF before the first byte when ``eof_ok``."""
    data = bytearray()
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            if eof_ok and not data:
                return None
            raise ProtocolError(f"connection closed after {len(data)} of {n} bytes")
        data += got
    return bytes(data)


def _recv_discard(sock: socket.socket, n: int, buf: memoryview) -> None:
    """Read and drop ``n`` bytes through ``buf``, so that no buffer grows with the frame."""
    while n:
        got = sock.recv_into(buf, min(n, len(buf)))
        if not got:
            raise ProtocolError(f"connection closed with {n} bytes of the frame unread")
        n -= got


def _pieces(head: bytes, body: memoryview | None, size: int, chunk: int) -> Iterator[memoryview | bytes]:
    """``head`` and then ``size`` body bytes (zeros where ``body`` is None), in pieces of at most ``chunk`` bytes."""
    first = min(size, chunk - len(head))
    yield head + bytes(body[:first] if body is not None else _ZEROS[:first])
    for offset in range(first, size, chunk):
        n = min(chunk, size - offset)
        yield body[offset:offset + n] if body is not None else _ZEROS[:n]


def _send_all(sock: socket.socket, pieces: Iterator[memoryview | bytes], rate_bps: float | None) -> None:
    """Send every piece; when paced, each piece leaves once a link at ``rate_bps`` would have finished it."""
    start, sent = time.perf_counter(), 0
    for piece in pieces:
        sent += len(piece)
        if rate_bps:
            # Absolute deadlines, so that sleep overshoot does not accumulate over many pieces.
            delay = start + sent * 8 / rate_bps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sock.sendall(piece)


def nominal_seconds(payload_bytes: int, response_bytes: int, rate_mbit: float) -> float:
    """Time to move one request and its response at ``rate_mbit`` both ways, counting frame headers only."""
    return (payload_bytes + 2 * HEADER.size + response_bytes + HEADER.size) * 8 / (rate_mbit * 1e6)


# --- echo server and client ----------------------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = memoryview(bytearray(_IO_CHUNK))
        limit, chunk = self.server.max_frame, PACE_CHUNK if self.server.pace_bps else _IO_CHUNK
        try:
            while (header := _recv_exact(sock, HEADER.size, eof_ok=True)) is not None:
                (length,) = HEADER.unpack(header)
                if not HEADER.size <= length <= limit:
                    return  # refused unread: closing is the only answer that allocates nothing
                (reply,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
                if reply > limit:
                    return
                _recv_discard(sock, length - HEADER.size, buf)
                _send_all(sock, _pieces(HEADER.pack(reply), None, reply, chunk), self.server.pace_bps)
        except OSError:
            return  # a client that went away mid-frame ends only its own connection


class EchoServer(socketserver.ThreadingTCPServer):
    """Answers each request frame with a frame of the size it asks for; one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, pace_mbit: float | None = None,
                 max_frame: int = MAX_FRAME) -> None:
        if pace_mbit is not None:
            _check_rate(pace_mbit)
        self.pace_bps = pace_mbit * 1e6 if pace_mbit else None
        self.max_frame = max_frame
        super().__init__((host, port), _EchoHandler)

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS picked when asked for port 0)."""
        return self.server_address[1]

    def start_thread(self) -> threading.Thread:
        """Serve in a daemon thread; ``shutdown()`` and ``server_close()`` stop it.

        It polls for shutdown every 20 ms rather than serve_forever's default 0.5 s, which made every close of a
        :class:`PacedSocketLink` take half a second.
        """
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02},
                                  name=f"echo-{self.port}", daemon=True)
        thread.start()
        return thread


def serve_echo(host: str, port: int, *, pace_mbit: float | None = None, max_frame: int = MAX_FRAME) -> None:
    """Serve forever, after printing ``ready PORT`` once listening (port 0 picks a free one)."""
    with EchoServer(host, port, pace_mbit=pace_mbit, max_frame=max_frame) as server:
        print(f"ready {server.port}", flush=True)
        server.serve_forever()


class EchoClient:
    """One TCP connection to an echo server, kept open across requests."""

    def __init__(self, host: str, port: int, *, pace_mbit: float | None = None, timeout: float = 60.0) -> None:
        if pace_mbit is not None:
            _check_rate(pace_mbit)
        self.host, self.port = host, port
        self.pace_bps = pace_mbit * 1e6 if pace_mbit else None
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = memoryview(bytearray(_IO_CHUNK))

    def request(self, payload: bytes, response_bytes: int) -> float:
        """Send ``payload``, receive ``response_bytes`` back, and return the wall time in seconds."""
        body = memoryview(payload).cast("B")
        if len(body) + HEADER.size > MAX_FRAME or not 0 <= response_bytes <= MAX_FRAME:
            raise ValueError(f"request and response must each fit in {MAX_FRAME} bytes")
        head = HEADER.pack(HEADER.size + len(body)) + HEADER.pack(response_bytes)
        chunk = PACE_CHUNK if self.pace_bps else _IO_CHUNK
        start = time.perf_counter()
        _send_all(self._sock, _pieces(head, body, len(body), chunk), self.pace_bps)
        (length,) = HEADER.unpack(_recv_exact(self._sock, HEADER.size))
        if length != response_bytes:
            raise ProtocolError(f"asked for {response_bytes} bytes, the server announced {length}")
        _recv_discard(self._sock, length, self._buf)
        return time.perf_counter() - start

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- links ---------------------------------------------------------------------------------------------


class Link(Protocol):
    """What :func:`measure_transfer` needs from a link."""

    kind: str
    rate_mbit: float

    @property
    def client(self) -> EchoClient: ...

    def close(self) -> None: ...


def _check_rate(rate_mbit: float) -> None:
    if not (isinstance(rate_mbit, (int, float)) and math.isfinite(rate_mbit) and rate_mbit > 0):
        raise ValueError(f"a rate must be a positive number of Mbit/s, not {rate_mbit!r}")


class PacedSocketLink:
    """Loopback client and in-process echo server that each pace their sends to ``rate_mbit`` both ways."""

    kind = "paced-loopback"

    def __init__(self, rate_mbit: float) -> None:
        _check_rate(rate_mbit)
        self.rate_mbit = float(rate_mbit)
        self.server = EchoServer("127.0.0.1", 0, pace_mbit=rate_mbit)
        self.server.start_thread()
        try:
            self._client = EchoClient("127.0.0.1", self.server.port, pace_mbit=rate_mbit)
        except BaseException:
            self._stop_server()
            raise

    @property
    def client(self) -> EchoClient:
        """The client connected to this link's echo server."""
        return self._client

    def _stop_server(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def close(self) -> None:
        """Close the client and stop the server."""
        self._client.close()
        self._stop_server()

    def __enter__(self) -> PacedSocketLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _tool(name: str) -> str | None:
    """The path of ``ip`` or ``tc``, looking in the sbin folders that a non-root PATH often lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short ip/tc command; on failure raise its stderr as a LinkEmulationError when ``check``."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        if not check:
            return subprocess.CompletedProcess(args, 1, "", str(e))
        raise LinkEmulationError(f"`{' '.join(args)}` failed: {e}") from e
    if check and done.returncode:
        raise LinkEmulationError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def _tbf_args(rate_mbit: float) -> list[str]:
    """tbf options for ``rate_mbit``: a bucket of about one frame, and a queue of 0.2 s.

    The bucket lets its size through at line speed after any idle moment, so a large one makes small transfers
    look free; one that cannot hold a full frame stalls the link. One frame, or 0.5 ms worth where that is more
    (from 24 Mbit/s up), keeps a 10 KB transfer close to nominal yet lets 100 Mbit/s through in full. The queue
    of 0.2 s (never under 64 KB) absorbs TCP's bursts without loss and adds that much delay at most.
    """
    bps = rate_mbit * 1e6
    burst = max(_MTU_FRAME, math.ceil(bps / 8 * _BURST_SECONDS))
    limit = max(64 * 1024, math.ceil(bps / 8 * _QUEUE_SECONDS)) + burst
    return ["rate", f"{round(bps)}bit", "burst", str(burst), "limit", str(limit)]


def _used_networks(ip: str) -> list[ipaddress.IPv4Network]:
    """Networks of the host's IPv4 addresses and routes, which a new link's /30 must not overlap."""
    text = _run([ip, "-4", "-o", "addr", "show"], check=False).stdout
    nets = [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", text)]
    routes = _run([ip, "-4", "route", "show", "table", "all"], check=False).stdout
    # A route line starts with its destination, after a type such as "local" or "blackhole" where it has one.
    destinations = re.findall(r"^(?:[a-z]+ )?([\d.]+(?:/\d+)?) ", routes, re.M)
    return nets + [ipaddress.ip_network(d, strict=False) for d in destinations]


def _pick_subnet(ip: str, seed: int) -> ipaddress.IPv4Network:
    """A /30 from the pool that no address or route on the host overlaps, starting from a per-process spot."""
    used = _used_networks(ip)
    count = _ADDRESS_POOL.num_addresses // 4
    for step in range(count):
        net = ipaddress.ip_network((int(_ADDRESS_POOL.network_address) + 4 * ((seed + step) % count), 30))
        if not any(net.overlaps(other) for other in used):
            return net
    raise LinkEmulationError(f"no free /30 left in {_ADDRESS_POOL}")


_sequence = itertools.count()
_live: set[RateLimitedLink] = set()


class RateLimitedLink:
    """A network namespace (the server) joined to the host (the client) by a veth pair, tbf-limited both ways.

    Uplink, client to server, is the tbf on the egress of the host-side veth (``host_dev``); downlink, server
    to client, is the tbf on the egress of the namespace-side veth (``netns_dev``). Each carries ``rate_mbit``
    of whole Ethernet frames, so TCP goodput is about 95% of it, as on a real link. Everything is created in
    the constructor and removed by :meth:`close` (the context manager's exit, or at interpreter exit).
    """

    kind = "netns-tbf"

    def __init__(self, rate_mbit: float, *, name: str | None = None, echo_server: bool = False) -> None:
        _check_rate(rate_mbit)
        if reason := _missing_privilege():
            raise LinkEmulationError(reason)
        seq = next(_sequence)
        self.rate_mbit = float(rate_mbit)
        # The pid keeps parallel processes apart, and lets remove_stale_links() find a dead process's links.
        self.netns = name or f"es{os.getpid()}x{seq % 1000}"
        if not _NAME_OK.fullmatch(self.netns):
            raise ValueError(f"a link name needs 1 to 14 of [A-Za-z0-9_.-], starting with a letter or digit, "
                             f"not {self.netns!r}")
        self.host_dev, self.netns_dev = f"{self.netns}h", f"{self.netns}n"
        self._ip, self._tc = _tool("ip") or "ip", _tool("tc") or "tc"
        self._owns_netns = self._owns_dev = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._client: EchoClient | None = None
        self._closed = False
        _live.add(self)
        try:
            net = _pick_subnet(self._ip, os.getpid() * 1000 + seq)
            self.client_ip, self.server_ip = (str(host) for host in net.hosts())
            self._create(net.prefixlen)
            if echo_server:
                self.start_echo_server()
        except BaseException:
            self.close()
            raise

    def _create(self, prefix: int) -> None:
        ip, ns = self._ip, self.netns
        _run([ip, "netns", "add", ns])
        self._owns_netns = True
        _run([ip, "link", "add", self.host_dev, "type", "veth", "peer", "name", self.netns_dev, "netns", ns])
        self._owns_dev = True
        _run([ip, "addr", "add", f"{self.client_ip}/{prefix}", "dev", self.host_dev])
        _run([ip, "-n", ns, "addr", "add", f"{self.server_ip}/{prefix}", "dev", self.netns_dev])
        _run([ip, "link", "set", self.host_dev, "up"])
        _run([ip, "-n", ns, "link", "set", self.netns_dev, "up"])
        _run([ip, "-n", ns, "link", "set", "lo", "up"])
        tbf = _tbf_args(self.rate_mbit)
        _run([self._tc, "qdisc", "add", "dev", self.host_dev, "root", "tbf", *tbf])  # uplink
        _run([self._tc, "-n", ns, "qdisc", "add", "dev", self.netns_dev, "root", "tbf", *tbf])  # downlink

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace (``ip netns exec``); :meth:`close` stops it."""
        proc = subprocess.Popen([self._ip, "netns", "exec", self.netns, *args], **kw)
        self._procs.append(proc)
        return proc

    def start_echo_server(self, *, timeout: float = 15.0) -> EchoClient:
        """Start an echo server in the namespace and connect :attr:`client` to it."""
        if self._client is not None:
            raise LinkEmulationError(f"link {self.netns} already has an echo server")
        with tempfile.TemporaryFile() as stderr:
            proc = self.popen(serve_command(self.server_ip, 0), stdout=subprocess.PIPE, stderr=stderr)
            assert proc.stdout is not None
            ready = select.select([proc.stdout], [], [], timeout)[0]
            match = re.fullmatch(rb"ready (\d+)\n", proc.stdout.readline() if ready else b"")
            if not match:
                _stop(proc)
                stderr.seek(0)
                detail = stderr.read().decode(errors="replace").strip() or f"no 'ready' line in {timeout:g} s"
                raise LinkEmulationError(f"the echo server in {self.netns} did not start: {detail}")
        self._client = EchoClient(self.server_ip, int(match[1]))
        return self._client

    @property
    def client(self) -> EchoClient:
        """The client connected to the namespace's echo server."""
        if self._client is None:
            raise LinkEmulationError(f"link {self.netns} has no echo server: call start_echo_server() first")
        return self._client

    def close(self) -> None:
        """Stop the processes in the namespace and delete the veth pair and the namespace; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._client.close()
        for proc in self._procs:
            _stop(proc)
        if self._owns_dev:
            _run([self._ip, "link", "del", self.host_dev], check=False)  # takes its peer with it
        if self._owns_netns:
            _delete_netns(self._ip, self.netns)
        _live.discard(self)

    def __enter__(self) -> RateLimitedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RateLimitedLink({self.rate_mbit:g} Mbit/s, {self.client_ip} -> {self.netns}:{self.server_ip})"


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a process, killing it if it does not exit within 2 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _delete_netns(ip: str, netns: str) -> None:
    """Kill what still runs in ``netns`` (it would keep the namespace alive) and delete it."""
    for pid in _run([ip, "netns", "pids", netns], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    done = _run([ip, "netns", "del", netns], check=False)
    if done.returncode and "No such file" not in done.stderr:
        warnings.warn(f"could not delete network namespace {netns}: {done.stderr.strip()}", stacklevel=3)


@atexit.register
def _close_live_links() -> None:
    for link in list(_live):
        link.close()


def remove_stale_links() -> list[str]:
    """Delete namespaces that links of processes no longer running left behind (after a kill -9); their names."""
    ip = _tool("ip")
    if ip is None or _missing_privilege():
        return []
    removed = []
    for line in _run([ip, "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if (match := _LINK_NAME.fullmatch(name)) and not _pid_alive(int(match[1])):
            _delete_netns(ip, name)  # the veth pair goes with the namespace
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_privilege() -> str | None:
    """Why netns and tc cannot even be tried here, or None."""
    if not sys.platform.startswith("linux"):
        return f"link emulation needs Linux network namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return "link emulation needs root (network namespaces and tc qdiscs need CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if _tool(tool) is None:
            return f"link emulation needs `{tool}` (iproute2), which is not on PATH or in /usr/sbin"
    return None


@functools.cache
def link_emulation_unavailable() -> str | None:
    """None when netns + veth + tbf links work here, else one line saying why not; tried once per process."""
    if reason := _missing_privilege():
        return reason
    try:
        with RateLimitedLink(1.0) as link:
            probe = link.popen([sys.executable, "-c", "pass"], stderr=subprocess.PIPE)
            _, err = probe.communicate(timeout=15)
            if probe.returncode:
                return f"`ip netns exec` failed: {err.decode(errors='replace').strip() or probe.returncode}"
    except (LinkEmulationError, OSError, subprocess.TimeoutExpired) as e:
        return " ".join(str(e).split())
    return None


def serve_command(host: str, port: int, *, pace_mbit: float | None = None) -> list[str]:
    """The command line that runs :func:`serve_echo` in a fresh interpreter, without importing the package."""
    # By path in a fresh, isolated interpreter: nothing of edgesplit (or torch) is imported.
    # -I keeps the working folder off sys.path; run_path, unlike running the file, leaves sys.path alone.
    bootstrap = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    command = [sys.executable, "-I", "-c", bootstrap, os.path.abspath(__file__), "serve", "--host", host,
               "--port", str(port)]
    return command + (["--pace-mbit", str(pace_mbit)] if pace_mbit else [])


def open_link(rate_mbit: float) -> RateLimitedLink | PacedSocketLink:
    """A netns + tbf link with an echo server in the namespace where possible, else a paced loopback link."""
    if link_emulation_unavailable() is None:
        return RateLimitedLink(rate_mbit, echo_server=True)
    return PacedSocketLink(rate_mbit)


def measure_transfer(link: Link, payload_bytes: int, response_bytes: int, repeats: int) -> list[float]:
    """Seconds per request of ``payload_bytes`` up and ``response_bytes`` down, after one tiny warm-up request."""
    if payload_bytes < 0 or response_bytes < 0 or repeats < 1:
        raise ValueError("sizes must be non-negative and repeats at least 1")
    payload = bytes(payload_bytes)
    link.client.request(b"", 0)
    return [link.client.request(payload, response_bytes) for _ in range(repeats)]


def main(argv: Sequence[str] | None = None) -> None:
    """``python bench/linkemu.py serve --host H --port P [--pace-mbit R]``."""
    parser = argparse.ArgumentParser(prog="python bench/linkemu.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an echo server; prints 'ready PORT' once listening")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--pace-mbit", type=float, default=None, help="pace responses to this rate")
    serve.add_argument("--max-frame", type=int, default=MAX_FRAME, help="refuse longer frames")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_echo(args.host, args.port, pace_mbit=args.pace_mbit, max_frame=args.max_frame)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
