"""Emulate a slow network link so that split-inference transfers can be measured over real sockets.

Two kinds of link share one client interface (``link.client.request(payload, response_bytes)``):

* :class:`RateLimitedLink`, kind ``"netns-tbf"``: a fresh network namespace joined to the host by a veth pair,
  with a token-bucket filter (``tc qdisc ... tbf``) on each end. The host is the device (client), the
  namespace is the server. The kernel's TCP does the real work: segmentation, headers, ACKs, congestion
  control. It needs root, ``ip`` and ``tc``; :func:`link_emulation_unavailable` says why it cannot run.
  Each tbf queues 12,000 frames (18 MB) rather than dropping, and below 24 Mbit/s an idle filler keeps its
  bucket empty so that every frame waits its own serialization time (:func:`_shape` says how and why).
* :class:`PacedSocketLink`, kind ``"paced-loopback"``: the fallback without privileges. Client and echo server
  talk over 127.0.0.1 and each paces its own sends in 16 KB chunks, so that bytes cross the socket at the
  nominal rate on average. It has no per-packet header cost and no TCP dynamics.

:func:`open_link` picks the better one available and :func:`measure_transfer` times requests over either.
:class:`ChainedLinks` chains namespaces for several tiers (device ↔ gateway ↔ cloud), each hop rate-limited
both ways and, where asked, delayed by a user-space TAP delay line (this kernel has no netem). ``python
bench/linkemu.py check`` times transfers over fresh links against their nominal time, with drops and resends.

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
import collections
import errno
import functools
import ipaddress
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import statistics
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

# tbf parameters, chosen by measurement (see _tbf_args and _shape).
_MTU_FRAME = 1514  # the veth MTU (1500) plus the 14-byte Ethernet header that tbf counts
_BURST_SECONDS = 0.0005
_QUEUE_SECONDS = 0.2
# Packets each band of the queue under tbf holds: 12,000 full frames are 18 MB, more than the 4 MiB send buffer
# (tcp_wmem's maximum) that one TCP socket can have in flight, so a request of a few MB queues instead of dropping.
_QUEUE_PACKETS = 12_000
# Below this rate an idle filler keeps the bucket empty (see _shape); above it one frame takes under 0.5 ms anyway.
_FILL_BELOW_MBIT = _MTU_FRAME * 8 / _BURST_SECONDS / 1e6
_FILL_ETHERTYPE = 0x88B5  # IEEE 802 "local experimental": no protocol handler takes it, so the peer drops it
_FILL_MAC = bytes.fromhex("02657300fe11")  # locally administered, matching no veth: the peer drops it as not its own
_FILL_PRIORITY = 1  # pfifo_fast puts skb priority 1 in band 2, behind every ordinary packet (priority 0, band 1)
_WIRE_HEADER = 14 + 20 + 32  # Ethernet, IPv4 and TCP-with-timestamps headers of one segment
_MSS = 1500 - 20 - 32

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
    """tbf options for ``rate_mbit``: a bucket of about one frame, and a queue of 0.2 s or 18 MB, whichever is more.

    The bucket lets its size through at line speed after any idle moment, so a large one makes small transfers
    look free; one that cannot hold a full frame stalls the link. One frame, or 0.5 ms worth where that is more
    (from 24 Mbit/s up), lets 100 Mbit/s through in full; below 24 Mbit/s :func:`_shape` also keeps it empty.
    The queue must hold what one TCP socket can send before it hears back: with the former 64 KB (+ one frame)
    a 65 KB response at 1 Mbit/s lost its last segments and took 1.47 s instead of 0.53 s. :func:`_shape` puts a
    pfifo_fast of ``_QUEUE_PACKETS`` under the tbf, so ``limit`` only sizes tbf's own default queue, where the
    qdisc is replaced without :func:`_shape` (``tc qdisc replace ... root tbf``).
    """
    bps = rate_mbit * 1e6
    burst = max(_MTU_FRAME, math.ceil(bps / 8 * _BURST_SECONDS))
    limit = max(_QUEUE_PACKETS * _MTU_FRAME, math.ceil(bps / 8 * _QUEUE_SECONDS)) + burst
    return ["rate", f"{round(bps)}bit", "burst", str(burst), "limit", str(limit)]


def fills_idle(rate_mbit: float) -> bool:
    """Whether a link at ``rate_mbit`` keeps its bucket empty with filler frames (below 24 Mbit/s)."""
    return rate_mbit < _FILL_BELOW_MBIT


def fill_frame_bytes(rate_mbit: float) -> int:
    """Size of the filler's frames at ``rate_mbit``: 0.5 ms of the link each, within Ethernet's 60 to 1514 bytes."""
    return max(60, min(_MTU_FRAME, round(rate_mbit * 1e6 * _BURST_SECONDS / 8)))


def free_bytes(rate_mbit: float) -> int:
    """Bytes that a link at ``rate_mbit`` lets through at line speed after an idle moment: 0 where it fills idle
    time (a packet then waits its own time, plus at most one 0.5 ms filler frame), else the bucket."""
    if fills_idle(rate_mbit):
        return 0
    tbf = _tbf_args(rate_mbit)
    return int(tbf[tbf.index("burst") + 1])


def _shape(ip: str, tc: str, netns: str | None, dev: str, rate_mbit: float) -> list[str] | None:
    """Limit the egress of ``dev`` (in ``netns``, or on the host) to ``rate_mbit``; the filler's command, if any.

    A token bucket sends a packet at once when it holds enough tokens, and after an idle moment it holds a whole
    bucket, so the first frame of every transfer crossed at line speed: a 2 KB request at 1 Mbit/s took 5 ms
    instead of 17 ms. A real link makes every frame wait its own serialization time. The returned command keeps
    the bucket empty while the link is idle: it sends throwaway frames of :func:`fill_frame_bytes` at the lowest
    priority, which the pfifo_fast under the tbf serves only when no ordinary packet waits, and only as fast as
    the bucket refills (the filler's socket holds a few frames at most, so it blocks until they leave). A packet
    then waits for its own tokens, after at most one filler frame (0.5 ms) already on its way.
    """
    on = ["-n", netns] if netns else []
    _run([ip, *on, "link", "set", dev, "txqueuelen", str(_QUEUE_PACKETS)])
    _run([tc, *on, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", *_tbf_args(rate_mbit)])
    _run([tc, *on, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "pfifo_fast"])
    if not fills_idle(rate_mbit):
        return None
    prefix = [ip, "netns", "exec", netns] if netns else []
    return prefix + _script_command("fill", "--dev", dev, "--frame-bytes", str(fill_frame_bytes(rate_mbit)))


def qdisc_drops(tc: str, dev: str, netns: str | None = None) -> int:
    """Packets the root qdisc of ``dev`` has dropped so far (``tc -s qdisc show``); the queue overflowing shows here."""
    shown = _run([tc, *(["-n", netns] if netns else []), "-s", "qdisc", "show", "dev", dev]).stdout
    if not (match := re.search(r"\(dropped (\d+),", shown)):
        raise LinkEmulationError(f"no drop count in `tc -s qdisc show dev {dev}`: {shown.strip()!r}")
    return int(match[1])


def fill_idle(dev: str, frame_bytes: int) -> None:
    """Send throwaway frames on ``dev`` at the lowest priority whenever its queue has room, until ``dev`` goes away
    or the process that started this one ends (see :func:`_shape`). Needs root (a raw AF_PACKET socket)."""
    if not 60 <= frame_bytes <= _MTU_FRAME:
        raise ValueError(f"a filler frame has 60 to {_MTU_FRAME} bytes, not {frame_bytes}")
    frame = _FILL_MAC + _FILL_MAC + struct.pack(">H", _FILL_ETHERTYPE) + bytes(frame_bytes - 14)
    parent = os.getppid()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum: a few frames queued at most
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, _FILL_PRIORITY)
        sock.bind((dev, 0))
        print("ready", flush=True)
        for sent in itertools.count():
            try:
                sock.send(frame)  # blocks until an earlier filler frame has left through the tbf
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the queue was full: only when the link is already busy
                    time.sleep(0.001)
                    continue
                return  # the device is gone: the link was closed
            if sent % 256 == 0 and os.getppid() != parent:
                return  # orphaned: whoever made the link is gone (remove_stale_links deletes the devices)


def _used_networks(ip: str) -> list[ipaddress.IPv4Network]:
    """Networks of the host's IPv4 addresses and routes, which a new link's /30 must not overlap."""
    text = _run([ip, "-4", "-o", "addr", "show"], check=False).stdout
    nets = [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", text)]
    routes = _run([ip, "-4", "route", "show", "table", "all"], check=False).stdout
    # A route line starts with its destination, after a type such as "local" or "blackhole" where it has one.
    destinations = re.findall(r"^(?:[a-z]+ )?([\d.]+(?:/\d+)?) ", routes, re.MULTILINE)
    return nets + [ipaddress.ip_network(d, strict=False) for d in destinations]


_TUNSETIFF = 0x400454CA
_IFF_TAP_NO_PI = 0x0002 | 0x1000  # IFF_TAP | IFF_NO_PI: whole Ethernet frames, no packet-info header
_CLONE_NEWNET = 0x40000000


def _open_tap(name: str, netns: str | None) -> int:
    """Create TAP device ``name`` in ``netns`` (None: this process's own) and return its file descriptor."""
    import ctypes  # only here: the echo server and the filler never need it
    import fcntl

    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else -1
    try:
        if netns:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(target, _CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            finally:
                os.close(target)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP_NO_PI))
        return fd
    finally:
        if netns:
            if libc.setns(home, _CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back home")
            os.close(home)


def delay_line(low_netns: str | None, low_dev: str, high_netns: str | None, high_dev: str,
               one_way_s: float) -> None:
    """Join two new TAP devices, ``low_dev`` in ``low_netns`` and ``high_dev`` in ``high_netns``, passing every
    frame read from one to the other ``one_way_s`` later (filler frames are dropped). Runs until terminated;
    the devices go with it. Needs root (``/dev/net/tun``, setns). This is the hop's propagation delay: the rate
    is still the tbf on each TAP's egress, before the frame reaches this process."""
    if not (math.isfinite(one_way_s) and 0 <= one_way_s <= 10):
        raise ValueError(f"a one-way delay is 0 to 10 s, not {one_way_s!r}")
    fds = [_open_tap(low_dev, low_netns), _open_tap(high_dev, high_netns)]
    for fd in fds:
        os.set_blocking(fd, False)
    queues: list[collections.deque[tuple[float, bytes]]] = [collections.deque(), collections.deque()]  # to each fd
    filler, parent = struct.pack(">H", _FILL_ETHERTYPE), os.getppid()
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        for fd, queue in zip(fds, queues):
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except (BlockingIOError, InterruptedError):
                    pass  # the frame is lost, as on a wire whose receiver is overrun
        due = [queue[0][0] for queue in queues if queue]
        timeout = min(1.0, max(0.0, min(due) - time.monotonic())) if due else 1.0
        ready = select.select(fds, [], [], timeout)[0]
        if not ready and not due and os.getppid() != parent:
            return  # orphaned and idle: whoever made the chain is gone
        for fd in ready:
            other = queues[1 - fds.index(fd)]
            for _ in range(64):  # what is waiting, up to a bound, so that writes keep their time
                try:
                    frame = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                if frame[12:14] != filler:
                    other.append((time.monotonic() + one_way_s, frame))


def _pick_subnet(ip: str, seed: int, taken: Sequence[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """A /30 from the pool that no address or route on the host, nor ``taken``, overlaps, starting from a
    per-process spot."""
    used = _used_networks(ip) + list(taken)
    count = _ADDRESS_POOL.num_addresses // 4
    for step in range(count):
        net = ipaddress.ip_network((int(_ADDRESS_POOL.network_address) + 4 * ((seed + step) % count), 30))
        if not any(net.overlaps(other) for other in used):
            return net
    raise LinkEmulationError(f"no free /30 left in {_ADDRESS_POOL}")


_sequence = itertools.count()
_live: set[RateLimitedLink | ChainedLinks] = set()


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
        fillers = [_shape(ip, self._tc, None, self.host_dev, self.rate_mbit),  # uplink
                   _shape(ip, self._tc, ns, self.netns_dev, self.rate_mbit)]  # downlink
        for command in fillers:
            if command is not None:
                self._procs.append(_start_filler(command))

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace (``ip netns exec``); :meth:`close` stops it."""
        proc = subprocess.Popen([self._ip, "netns", "exec", self.netns, *args], **kw)
        self._procs.append(proc)
        return proc

    def start_echo_server(self, *, timeout: float = 15.0) -> EchoClient:
        """Start an echo server in the namespace and connect :attr:`client` to it."""
        if self._client is not None:
            raise LinkEmulationError(f"link {self.netns} already has an echo server")
        port = _start_echo(self.popen, self.server_ip, f"the echo server in {self.netns}", timeout)
        self._client = EchoClient(self.server_ip, port)
        return self._client

    @property
    def free_bytes(self) -> int:
        """Bytes this link lets through at line speed after an idle moment (see :func:`free_bytes`)."""
        return free_bytes(self.rate_mbit)

    def drops(self) -> dict[str, int]:
        """Packets each direction's queue has dropped so far: ``{"up": ..., "down": ...}``."""
        return {"up": qdisc_drops(self._tc, self.host_dev), "down": qdisc_drops(self._tc, self.netns_dev, self.netns)}

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


class ChainedLinks:
    """Tiers in a chain, each joined to the next by a rate-limited veth pair: device ↔ gateway ↔ cloud.

    Tier 0 is the host (the device); tier k ≥ 1 is a network namespace of its own (tier 1 the gateway, tier 2
    the cloud, and so on). Hop k joins tier k-1 to tier k; ``rates[k-1]`` is its rate, one number for both
    directions or a pair ``(up, down)``, up being towards the higher tier. Each direction of each hop is a tbf
    shaped as :class:`RateLimitedLink`'s (a queue of 18 MB, and idle filler below 24 Mbit/s).

    The usual use is a tier talking to the next: a process on the host to a server at ``address(1)``, a server
    started with ``popen(1, ...)`` to one at ``address(2)``, and so on. Routes and forwarding also make every
    tier reachable from every other through the tiers between (at the slowest hop's rate).

    Delay: netem is not in this kernel, nor fq (for timestamp-based delay) nor BPF classifiers, and tbf limits
    only the rate, so a veth hop's round trip is its serialization and queueing alone (well under a millisecond
    when idle). A hop given a round trip in ``rtt_ms`` is instead a pair of TAP devices joined by a process,
    :func:`delay_line`, that passes each frame on half the round trip after the tbf let it out: TCP then sees
    the real round trip (slow start, ACK clocking). That process costs CPU (measured: 17% of a core at 20 Mbit/s,
    34–58% at 100 Mbit/s, with a 10 ms round trip) and its timing is only as good as the scheduler's, so it adds
    jitter of its own on a loaded machine.
    """

    kind = "netns-tbf-chain"

    def __init__(self, rates: Sequence[float | tuple[float, float]], *,
                 rtt_ms: Sequence[float] | None = None) -> None:
        if not 1 <= len(rates) <= 8:
            raise ValueError(f"a chain has 1 to 8 hops, not {len(rates)}")
        rtts = [0.0] * len(rates) if rtt_ms is None else list(rtt_ms)
        if len(rtts) != len(rates) or not all(isinstance(r, (int, float)) and 0 <= r <= 10_000 for r in rtts):
            raise ValueError(f"rtt_ms needs one round trip of 0 to 10,000 ms per hop, not {rtt_ms!r}")
        pairs = [(rate, rate) if not isinstance(rate, (tuple, list)) else tuple(rate) for rate in rates]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"a hop's rate is one number or a pair (up, down), not {pair!r}")
            for rate in pair:
                _check_rate(rate)
        if reason := _missing_privilege():
            raise LinkEmulationError(reason)
        self.rates: list[tuple[float, float]] = [(float(up), float(down)) for up, down in pairs]
        self.rtt_ms: list[float] = [float(r) for r in rtts]
        self._ip, self._tc = _tool("ip") or "ip", _tool("tc") or "tc"
        # Tier k's namespace; hop k's devices are f"{ns}h" in tier k-1 and f"{ns}n" in tier k, with ns tier k's.
        self._netns: list[str | None] = [None] + [f"es{os.getpid()}x{next(_sequence) % 1000}" for _ in self.rates]
        self._addresses: list[tuple[str, str]] = []  # per hop: (tier k-1's address, tier k's address)
        self._subnets: list[ipaddress.IPv4Network] = []
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._fillers: dict[tuple[int, bool], subprocess.Popen[Any]] = {}  # (hop, upper end): its idle filler
        self._closed = False
        _live.add(self)
        try:
            for hop in range(1, len(self._netns)):
                self._create_hop(hop)
            self._route()
        except BaseException:
            self.close()
            raise

    @property
    def tiers(self) -> int:
        """How many tiers: the hops plus one."""
        return len(self._netns)

    def netns(self, tier: int) -> str | None:
        """The namespace of ``tier`` (None for tier 0, the host)."""
        return self._netns[self._tier(tier)]

    def address(self, tier: int) -> str:
        """The IPv4 address of ``tier`` on the hop from the tier before (tier 0: its address on hop 1)."""
        tier = self._tier(tier)
        return self._addresses[0][0] if tier == 0 else self._addresses[tier - 1][1]

    def _tier(self, tier: int) -> int:
        if not (isinstance(tier, int) and 0 <= tier < len(self._netns)):
            raise ValueError(f"no tier {tier!r} in a chain of tiers 0 to {len(self._netns) - 1}")
        return tier

    def _dev(self, hop: int, upper: bool) -> tuple[str | None, str]:
        """(namespace, device) of hop ``hop``'s end in its upper (tier hop) or lower (tier hop-1) tier."""
        name = self._netns[hop]
        return (name, f"{name}n") if upper else (self._netns[hop - 1], f"{name}h")

    def _create_hop(self, hop: int) -> None:
        ip, ns = self._ip, self._netns[hop]
        assert ns is not None
        net = _pick_subnet(ip, os.getpid() * 1000 + int(ns.rsplit("x", 1)[1]), self._subnets)
        self._subnets.append(net)
        low, high = (str(host) for host in net.hosts())
        self._addresses.append((low, high))
        _run([ip, "netns", "add", ns])
        self._created.append(ns)
        (low_ns, low_dev), (_, high_dev) = self._dev(hop, False), self._dev(hop, True)
        on_low = ["-n", low_ns] if low_ns else []
        if rtt_ms := self.rtt_ms[hop - 1]:
            self._procs.append(_start_ready(_script_command(
                "delay", "--low-netns", low_ns or "", "--low-dev", low_dev, "--high-netns", ns, "--high-dev",
                high_dev, "--one-way-ms", repr(rtt_ms / 2)), f"the delay line of hop {hop}"))
        else:
            _run([ip, *on_low, "link", "add", low_dev, "type", "veth", "peer", "name", high_dev, "netns", ns])
        _run([ip, *on_low, "addr", "add", f"{low}/{net.prefixlen}", "dev", low_dev])
        _run([ip, "-n", ns, "addr", "add", f"{high}/{net.prefixlen}", "dev", high_dev])
        _run([ip, *on_low, "link", "set", low_dev, "up"])
        _run([ip, "-n", ns, "link", "set", high_dev, "up"])
        _run([ip, "-n", ns, "link", "set", "lo", "up"])
        up, down = self.rates[hop - 1]
        for upper, command in ((False, _shape(ip, self._tc, low_ns, low_dev, up)),
                               (True, _shape(ip, self._tc, ns, high_dev, down))):
            if command is not None:
                self._fillers[(hop, upper)] = _start_filler(command)
                self._procs.append(self._fillers[(hop, upper)])

    def set_rate(self, hop: int, rate: float | tuple[float, float]) -> None:
        """Change hop ``hop``'s rate in place (``tc qdisc change``), one number or ``(up, down)``: the namespaces,
        their addresses and the processes in them stay, so servers need not restart between rates. Each direction
        gets the tbf of a fresh link at the new rate, and its idle filler is stopped, resized or started."""
        if not 1 <= hop < len(self._netns):
            raise ValueError(f"no hop {hop!r} in a chain of hops 1 to {len(self._netns) - 1}")
        pair = (rate, rate) if not isinstance(rate, (tuple, list)) else tuple(rate)
        if len(pair) != 2:
            raise ValueError(f"a hop's rate is one number or a pair (up, down), not {rate!r}")
        for value in pair:
            _check_rate(value)
        for upper, value in ((False, float(pair[0])), (True, float(pair[1]))):
            netns, dev = self._dev(hop, upper)
            if (filler := self._fillers.pop((hop, upper), None)) is not None:
                _stop(filler)
                self._procs.remove(filler)
            on = ["-n", netns] if netns else []
            _run([self._tc, *on, "qdisc", "change", "dev", dev, "root", "handle", "1:", "tbf", *_tbf_args(value)])
            if fills_idle(value):
                prefix = [self._ip, "netns", "exec", netns] if netns else []
                self._fillers[(hop, upper)] = _start_filler(
                    prefix + _script_command("fill", "--dev", dev, "--frame-bytes", str(fill_frame_bytes(value))))
                self._procs.append(self._fillers[(hop, upper)])
        self.rates[hop - 1] = (float(pair[0]), float(pair[1]))

    def _route(self) -> None:
        """Routes to the hops beyond a tier's neighbours, through them; forwarding in the tiers between."""
        ip, hops = self._ip, len(self._subnets)
        for tier, ns in enumerate(self._netns):
            on = ["-n", ns] if ns else []
            for hop in range(1, hops + 1):
                if hop < tier:  # behind it: through the tier before, over hop `tier`
                    via, (_, dev) = self._addresses[tier - 1][0], self._dev(tier, True)
                elif hop > tier + 1:  # ahead of it: through the tier after, over hop `tier + 1`
                    via, (_, dev) = self._addresses[tier][1], self._dev(tier + 1, False)
                else:
                    continue
                _run([ip, *on, "route", "add", str(self._subnets[hop - 1]), "via", via, "dev", dev])
            if ns and 0 < tier < hops:
                _run([ip, "netns", "exec", ns, _tool("sysctl") or "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def popen(self, tier: int, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``args`` in ``tier`` (on the host for tier 0, else in its namespace); :meth:`close` stops it."""
        ns = self.netns(tier)
        proc = subprocess.Popen([self._ip, "netns", "exec", ns, *args] if ns else list(args), **kw)
        self._procs.append(proc)
        return proc

    def start_echo_server(self, tier: int, *, timeout: float = 15.0) -> int:
        """Start an echo server in ``tier``, listening on :meth:`address` ``(tier)``; its port."""
        return _start_echo(functools.partial(self.popen, tier), self.address(tier), f"the echo server in tier {tier}",
                           timeout)

    def measure_hop(self, hop: int, payload_bytes: int, response_bytes: int, repeats: int, *,
                    timeout: float = 120.0) -> list[float]:
        """Seconds per request over hop ``hop`` alone: a client in tier hop-1 times requests of ``payload_bytes``
        up and ``response_bytes`` down to a fresh echo server in tier hop, after one tiny warm-up request."""
        if not 1 <= hop < len(self._netns):
            raise ValueError(f"no hop {hop!r} in a chain of hops 1 to {len(self._netns) - 1}")
        if payload_bytes < 0 or response_bytes < 0 or repeats < 1:
            raise ValueError("sizes must be non-negative and repeats at least 1")
        port = self.start_echo_server(hop)
        proc = self.popen(hop - 1, measure_command(self.address(hop), port, payload_bytes, response_bytes, repeats),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.communicate()
            raise LinkEmulationError(f"measuring hop {hop} took over {timeout:g} s") from e
        if proc.returncode:
            raise LinkEmulationError(f"measuring hop {hop} failed: {err.decode(errors='replace').strip()}")
        return [float(t) for t in out.split()]

    def drops(self) -> list[dict[str, int]]:
        """Per hop, packets each direction's queue has dropped so far: ``{"up": ..., "down": ...}``."""
        return [{"up": qdisc_drops(self._tc, *reversed(self._dev(hop, False))),
                 "down": qdisc_drops(self._tc, *reversed(self._dev(hop, True)))} for hop in range(1, self.tiers)]

    def close(self) -> None:
        """Stop every process started in the chain and delete its namespaces (their devices go with them)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            _stop(proc)
        for hop in range(len(self._created), 0, -1):
            # At once, rather than when the kernel gets round to freeing the namespace; takes its peer with it.
            low_ns, low_dev = self._dev(hop, False)
            _run([self._ip, *(["-n", low_ns] if low_ns else []), "link", "del", low_dev], check=False)
        for ns in reversed(self._created):
            _delete_netns(self._ip, ns)
        _live.discard(self)

    def __enter__(self) -> ChainedLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        hops = ", ".join(f"{up:g}/{down:g}" for up, down in self.rates)
        return f"ChainedLinks([{hops}] Mbit/s up/down, tiers {self._netns[1:]})"


def _start_echo(popen: Any, host: str, what: str, timeout: float) -> int:
    """Start an echo server on ``host`` through ``popen`` (which runs it where it belongs); its port."""
    with tempfile.TemporaryFile() as stderr:
        proc = popen(serve_command(host, 0), stdout=subprocess.PIPE, stderr=stderr)
        match = re.fullmatch(rb"ready (\d+)\n", _await_ready(proc, stderr, what, timeout))
    if not match:
        raise LinkEmulationError(f"{what} printed no port")
    return int(match[1])


def _start_ready(command: list[str], what: str, timeout: float = 15.0) -> subprocess.Popen[Any]:
    """Start ``command`` and wait until it prints its ``ready`` line."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        _await_ready(proc, stderr, what, timeout)
    return proc


def _start_filler(command: list[str], timeout: float = 15.0) -> subprocess.Popen[Any]:
    """Start a filler (see :func:`_shape`) and wait until its socket is bound."""
    return _start_ready(command, f"the idle filler `{' '.join(command[-4:])}`", timeout)


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


def _script_command(*args: str) -> list[str]:
    """The command line that runs this file with ``args`` in a fresh interpreter, without importing the package."""
    # By path in a fresh, isolated interpreter: nothing of edgesplit (or torch) is imported.
    # -I keeps the working folder off sys.path; run_path, unlike running the file, leaves sys.path alone.
    bootstrap = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    return [sys.executable, "-I", "-c", bootstrap, os.path.abspath(__file__), *args]


def serve_command(host: str, port: int, *, pace_mbit: float | None = None) -> list[str]:
    """The command line that runs :func:`serve_echo` in a fresh interpreter, without importing the package."""
    command = _script_command("serve", "--host", host, "--port", str(port))
    return command + (["--pace-mbit", str(pace_mbit)] if pace_mbit else [])


def measure_command(host: str, port: int, payload_bytes: int, response_bytes: int, repeats: int) -> list[str]:
    """The command line that times requests to an echo server from wherever it runs (another tier's namespace);
    it prints the seconds of each request, space-separated, on one line."""
    return _script_command("measure", "--host", host, "--port", str(port), "--payload-bytes", str(payload_bytes),
                           "--response-bytes", str(response_bytes), "--repeats", str(repeats))


def _await_ready(proc: subprocess.Popen[Any], stderr: Any, what: str, timeout: float) -> bytes:
    """The first line ``proc`` prints, which must start with ``ready``; else stop it and raise with its stderr."""
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], timeout)[0]
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b"ready"):
        _stop(proc)
        stderr.seek(0)
        detail = stderr.read().decode(errors="replace").strip() or f"no 'ready' line in {timeout:g} s"
        raise LinkEmulationError(f"{what} did not start: {detail}")
    return line


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


# Request (up) and response (down) sizes timed by `check`: the two faults (a 65 KB transfer at 1 Mbit/s, 2 to
# 10 KB transfers), a few MB queued at 1 and 10 Mbit/s, and the rates where the bucket, not the filler, applies.
CHECK_CASES = [(1.0, 65536, 0), (1.0, 0, 65536), (1.0, 2_000_000, 0), (10.0, 2_000_000, 0), (10.0, 0, 2_000_000),
               (1.0, 2000, 0), (1.0, 5000, 0), (1.0, 10_000, 0), (10.0, 2000, 0), (10.0, 10_000, 0),
               (100.0, 10_000, 0), (100.0, 10_000_000, 0)]


def _retransmits(link: RateLimitedLink) -> tuple[int | None, int | None]:
    """TCP segments resent so far by the client's socket and in the link's namespace (None where unreadable)."""
    try:
        info = link.client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        client: int | None = struct.unpack_from("I", info, 100)[0]  # tcpi_total_retrans
    except (OSError, struct.error):
        client = None
    nstat = _tool("nstat")
    out = _run([link._ip, "netns", "exec", link.netns, nstat, "-az", "TcpRetransSegs"], check=False).stdout if nstat \
        else ""
    match = re.search(r"TcpRetransSegs\s+(\d+)", out)
    return client, int(match[1]) if match else None


def check_links(cases: Sequence[tuple[float, int, int]] = CHECK_CASES, repeats: int = 3) -> list[dict[str, Any]]:
    """Time each (rate, up bytes, down bytes) over a fresh :class:`RateLimitedLink`: the median of ``repeats``
    requests, each after 0.3 s idle (one request where that would take over 3 s), against
    :func:`nominal_seconds`, with the queues' drops and the TCP segments resent."""
    rows = []
    for rate, up, down in cases:
        with RateLimitedLink(rate, echo_server=True) as link:
            link.client.request(b"", 0)
            times = []
            for _ in range(1 if nominal_seconds(up, down, rate) > 3 else repeats):
                time.sleep(0.3)  # idle: a bucket that refilled would let the start of the transfer through at once
                times.append(link.client.request(bytes(up), down))
            client, server = _retransmits(link)
            median = statistics.median(times)
            rows.append({"rate_mbit": rate, "up_bytes": up, "down_bytes": down, "median_s": median,
                         "nominal_s": nominal_seconds(up, down, rate),
                         "ratio": median / nominal_seconds(up, down, rate), "drops": link.drops(),
                         "retransmits_client": client, "retransmits_server": server, "times_s": times})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python bench/linkemu.py serve --host H --port P [--pace-mbit R]``, ``fill ...`` or ``measure ...``."""
    parser = argparse.ArgumentParser(prog="python bench/linkemu.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an echo server; prints 'ready PORT' once listening")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--pace-mbit", type=float, default=None, help="pace responses to this rate")
    serve.add_argument("--max-frame", type=int, default=MAX_FRAME, help="refuse longer frames")
    fill = commands.add_parser("fill", help="keep DEV's tbf bucket empty with throwaway frames (root; see _shape)")
    fill.add_argument("--dev", required=True)
    fill.add_argument("--frame-bytes", type=int, required=True)
    measure = commands.add_parser("measure", help="time requests to an echo server; prints the seconds of each")
    measure.add_argument("--host", required=True)
    measure.add_argument("--port", type=int, required=True)
    measure.add_argument("--payload-bytes", type=int, default=0)
    measure.add_argument("--response-bytes", type=int, default=0)
    measure.add_argument("--repeats", type=int, default=1)
    delay = commands.add_parser("delay", help="join two new TAP devices with a delay (root; see delay_line)")
    delay.add_argument("--low-netns", default="", help="namespace of the first device ('': this one)")
    delay.add_argument("--low-dev", required=True)
    delay.add_argument("--high-netns", default="", help="namespace of the second device ('': this one)")
    delay.add_argument("--high-dev", required=True)
    delay.add_argument("--one-way-ms", type=float, required=True)
    check = commands.add_parser("check", help="time transfers over netns + tbf links against their nominal time")
    check.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.command == "check":
        if reason := link_emulation_unavailable():
            parser.exit(2, f"linkemu: error: {reason}\n")
        rows = check_links()
        for row in rows:
            print(f"{row['rate_mbit']:6g} Mbit/s  up {row['up_bytes']:>9} B  down {row['down_bytes']:>9} B: "
                  f"{row['median_s'] * 1e3:9.1f} ms, nominal {row['nominal_s'] * 1e3:9.1f} ms, x{row['ratio']:.2f}, "
                  f"drops {row['drops']['up']}/{row['drops']['down']}, "
                  f"resent {row['retransmits_client']}/{row['retransmits_server']}", flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"kind": "linkemu-check", "version": 1, "rows": rows}, f, indent=1)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "delay":
        delay_line(args.low_netns or None, args.low_dev, args.high_netns or None, args.high_dev,
                   args.one_way_ms / 1e3)
        return
    if args.command == "fill":
        fill_idle(args.dev, args.frame_bytes)
        return
    if args.command == "measure":
        if args.payload_bytes < 0 or args.response_bytes < 0 or args.repeats < 1:
            parser.error("sizes must be non-negative and --repeats at least 1")
        with EchoClient(args.host, args.port) as client:
            client.request(b"", 0)
            payload = bytes(args.payload_bytes)
            print(" ".join(f"{client.request(payload, args.response_bytes):.6f}" for _ in range(args.repeats)))
        return
    try:
        serve_echo(args.host, args.port, pace_mbit=args.pace_mbit, max_frame=args.max_frame)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
