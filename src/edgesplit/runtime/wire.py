"""The runtime's binary frames: a request carries one crossing set to a tail, a response carries its result.

Both are little-endian and versioned; docs/protocol.md gives the layout byte by byte, so a device written in
another language can speak it. The tensors inside are codec frames (docs/codecs.md), bundled with ``pack``.
Nothing here unpickles or evaluates anything: every field is read with ``struct`` and checked before use.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from edgesplit.errors import EdgesplitError

__all__ = ["MAX_MODEL_ID", "MAX_TOP_K", "MEDIA_TYPE", "REQUEST_MAGIC", "RESPONSE_MAGIC", "WIDTH_SCALE",
           "WIRE_VERSION", "Request", "Response", "Status", "WireError", "check_model_id", "model_id_for",
           "new_request_id"]

REQUEST_MAGIC = b"ESRQ"
RESPONSE_MAGIC = b"ESRS"
WIRE_VERSION = 1
MEDIA_TYPE = "application/x-edgesplit-frame"
MAX_MODEL_ID = 64
MAX_TOP_K = 255
WIDTH_SCALE = 1000  # widths travel as u16 thousandths: 0.5 → 500
_FLAG_WIDTH = 0x01
_MODEL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

_REQUEST_HEAD = struct.Struct("<4sBBH16sBB")  # magic, version, flags, route id, request id, top-k, model id length
_RESPONSE_HEAD = struct.Struct("<4sBBH16sfI")  # magic, version, status, batch size, request id, server ms, length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class Status(IntEnum):
    """What happened to a request; each maps to the HTTP status the server answers with."""

    OK = 0
    BAD_REQUEST = 1
    UNAUTHORIZED = 2
    NOT_FOUND = 3
    TOO_LARGE = 4
    BUSY = 5
    UNAVAILABLE = 6
    INTERNAL = 7
    CONFLICT = 8  # a request id already used for another request (a retry must resend the same frame)
    TIMEOUT = 9  # the request did not arrive within the server's deadline
    BAD_GATEWAY = 10  # a relay's next hop failed (a chain plan's `serve --tier K --next URL`); the message names it

    @property
    def http(self) -> int:
        return {0: 200, 1: 400, 2: 401, 3: 404, 4: 413, 5: 429, 6: 503, 7: 500, 8: 409, 9: 408, 10: 502}[self.value]


class WireError(EdgesplitError):
    """A frame that cannot be served; ``status`` says which kind of failure (and so which HTTP code)."""

    def __init__(self, message: str, status: Status = Status.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def check_model_id(model_id: str) -> str:
    """A model id as the wire carries it: 1–64 characters of letters, digits, '.', '_' and '-'."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
        raise WireError(f"model id {model_id!r} is not 1–64 characters of letters, digits, '.', '_' or '-'; "
                        "name the model with those (e.g. resnet8)")
    return model_id


def model_id_for(name: str) -> str:
    """A valid model id made from any model name (``pkg.mod:factory`` → ``pkg.mod_factory``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:MAX_MODEL_ID]
    return cleaned or "model"


def new_request_id() -> bytes:
    """A random 16-byte request id; retries reuse it, so the server answers a request at most once."""
    return uuid.uuid4().bytes


@dataclass(frozen=True)
class Request:
    """One inference request: which model and route (cut and codec), the encoded crossing tensors, and options."""

    request_id: bytes
    model_id: str
    route_id: int
    payload: bytes  # ``pack`` of one codec frame per crossing tensor
    width: float | None = None  # slimmable bottleneck width, when the route has one
    top_k: int = 0  # 0: the tail's outputs; k: only the k largest values and their indices per row

    def to_bytes(self) -> bytes:
        check_model_id(self.model_id)
        if len(self.request_id) != 16:
            raise WireError("a request id is 16 bytes (e.g. uuid4().bytes)")
        if not 0 <= self.route_id <= 0xFFFF:
            raise WireError(f"route id {self.route_id} does not fit in 16 bits")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise WireError(f"top-k {self.top_k} is outside 0..{MAX_TOP_K}")
        model_id = self.model_id.encode("ascii")
        flags = _FLAG_WIDTH if self.width is not None else 0
        parts = [_REQUEST_HEAD.pack(REQUEST_MAGIC, WIRE_VERSION, flags, self.route_id, self.request_id, self.top_k,
                                    len(model_id)), model_id]
        if self.width is not None:
            thousandths = round(self.width * WIDTH_SCALE)
            if not 1 <= thousandths <= WIDTH_SCALE:
                raise WireError(f"width {self.width} is outside (0, 1]")
            parts.append(_U16.pack(thousandths))
        parts += [_U32.pack(len(self.payload)), self.payload]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, max_payload: int | None = None) -> Request:
        """Parse and check a request frame; raises WireError (400, or 413 above ``max_payload``)."""
        data = bytes(data)
        if len(data) < _REQUEST_HEAD.size:
            raise WireError(f"request frame truncated: {len(data)} bytes, the header alone is {_REQUEST_HEAD.size}")
        magic, version, flags, route_id, request_id, top_k, id_length = _REQUEST_HEAD.unpack_from(data)
        if magic != REQUEST_MAGIC:
            raise WireError("not an edgesplit request frame (bad magic); send frames built as docs/protocol.md says")
        if version != WIRE_VERSION:
            raise WireError(f"request frame version {version} is not supported; this server speaks version "
                            f"{WIRE_VERSION} (update the client or the server)")
        if flags & ~_FLAG_WIDTH:
            raise WireError(f"request frame has unknown flags 0x{flags:02x}; this server speaks version {WIRE_VERSION}")
        pos = _REQUEST_HEAD.size
        model_id = _take(data, pos, id_length, "model id")
        pos += id_length
        try:
            model_text = check_model_id(model_id.decode("ascii"))
        except UnicodeDecodeError as error:
            raise WireError("model id is not ASCII; use letters, digits, '.', '_' or '-'") from error
        width = None
        if flags & _FLAG_WIDTH:
            (thousandths,) = _U16.unpack(_take(data, pos, 2, "width"))
            pos += 2
            if not 1 <= thousandths <= WIDTH_SCALE:
                raise WireError(f"width {thousandths}/1000 is outside (0, 1]")
            width = thousandths / WIDTH_SCALE
        (length,) = _U32.unpack(_take(data, pos, 4, "payload length"))
        pos += 4
        if max_payload is not None and length > max_payload:
            raise WireError(f"payload of {length:,} bytes is over this server's limit of {max_payload:,}",
                            Status.TOO_LARGE)
        payload = _take(data, pos, length, "payload")
        if pos + length != len(data):
            raise WireError(f"request frame corrupt: {len(data) - pos - length} bytes after the payload")
        return cls(request_id, model_text, route_id, payload, width, top_k)


@dataclass(frozen=True)
class Response:
    """The answer to one request: the result tensors (``pack`` of codec frames) or, on failure, a message."""

    request_id: bytes
    status: Status
    payload: bytes  # OK: packed result frames; otherwise a UTF-8 message
    server_ms: float = 0.0  # from the frame's arrival to its answer, queueing and batching included
    batch_size: int = 0  # how many requests shared the tail's forward pass

    @property
    def message(self) -> str:
        return "" if self.status == Status.OK else self.payload.decode("utf-8", "replace")

    def to_bytes(self) -> bytes:
        return _RESPONSE_HEAD.pack(RESPONSE_MAGIC, WIRE_VERSION, int(self.status), min(self.batch_size, 0xFFFF),
                                   self.request_id, self.server_ms, len(self.payload)) + self.payload

    @classmethod
    def error(cls, request_id: bytes, status: Status, message: str) -> Response:
        return cls(request_id, status, message.encode("utf-8"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Response:
        """Parse a response frame; raises WireError when it is malformed."""
        data = bytes(data)
        if len(data) < _RESPONSE_HEAD.size:
            raise WireError(f"response frame truncated: {len(data)} bytes")
        magic, version, status, batch_size, request_id, server_ms, length = _RESPONSE_HEAD.unpack_from(data)
        if magic != RESPONSE_MAGIC:
            raise WireError("not an edgesplit response frame (bad magic); is the URL an edgesplit server?")
        if version != WIRE_VERSION:
            raise WireError(f"response frame version {version}; this client speaks {WIRE_VERSION}")
        if status not in Status._value2member_map_:
            raise WireError(f"response frame has unknown status {status}")
        if _RESPONSE_HEAD.size + length != len(data):
            raise WireError(f"response frame length {length} does not match its {len(data)} bytes")
        return cls(request_id, Status(status), data[_RESPONSE_HEAD.size:], server_ms, batch_size)


def _take(data: bytes, pos: int, length: int, what: str) -> bytes:
    if pos + length > len(data):
        raise WireError(f"request frame truncated in the {what}: needs {pos + length} bytes, has {len(data)}")
    return data[pos:pos + length]
