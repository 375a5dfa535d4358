"""The device server's wire format, version 1: a JSON header and typed little-endian arrays.

One message is one ZeroMQ frame (so the transport's per-frame size limit bounds the whole
message)::

    offset  size  content
    0       4     magic b"PGD\\x01"
    4       2     protocol version, uint16 little-endian (1)
    6       4     header length H, uint32 little-endian
    10      H     header: a UTF-8 JSON object
    10+H    ...   array payloads, back to back, in the order the header lists them

The header's ``"arrays"`` entry lists every payload as ``{"name", "dtype", "shape"}``; ``dtype``
is ``"float32"`` or ``"float64"`` (always little-endian on the wire), ``shape`` a list of
non-negative integers. The message length must equal ``10 + H + Σ nbytes`` exactly. Nothing is
ever unpickled or evaluated: arrays are copied out of the buffer with ``numpy.frombuffer``.

Requests carry ``"op"`` (``describe``, ``state``, ``measure``, ``ramp``, ``ping``), ``"id"`` (an
integer echoed in the reply) and ``"token"``; replies carry ``"id"``, ``"ok"`` and, on failure,
``"error"`` (an exception class name) and ``"message"``. docs/devices/server.md describes each
operation. :func:`decode` checks the framing against :class:`Limits` before anything is parsed
further and raises :class:`ProtocolError` naming the problem.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ...errors import PhysgradError

MAGIC = b"PGD\x01"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
PREFIX = struct.Struct("<4sHI")  # magic, version, header length
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
OPS = ("describe", "state", "measure", "ramp", "ping")


class ProtocolError(PhysgradError, ValueError):
    """A message is malformed, too large, of an unknown version, or does not match the schema."""


class AuthenticationError(PhysgradError, PermissionError):
    """The device server refused the request's token."""


class BudgetError(ProtocolError):
    """A request asks for more work than the server's per-request budget (send fewer probes or a smaller batch)."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds a server (and client) enforces on every message.

    ``max_message_bytes`` also becomes ZeroMQ's ``MAXMSGSIZE``: a peer sending a larger frame is
    disconnected by the transport before the server reads it. The server-side resource bounds:
    ``queue_per_connection`` messages may wait per connection (``RCVHWM``), ``max_unread_replies``
    replies may wait for a client that does not read (``SNDHWM``; more are dropped and counted),
    ``max_connections`` open connections (more are refused at the handshake, temporarily),
    ``max_work`` bounds one request's work, ``probes × batch × work_per_sample`` (the device's
    declared cost per sample, default ``inputs + outputs + parameters``), ``heartbeat_s`` is the
    heartbeat interval (a silent peer is dropped after three), ``handshake_s`` the time a new
    connection has to authenticate, and ``reply_cache_bytes`` bounds the replies kept for
    retried requests.
    """

    max_message_bytes: int = 16 * 2**20
    max_header_bytes: int = 64 * 2**10
    max_arrays: int = 64
    max_dims: int = 8
    max_probes: int = 4096
    max_work: int = 2**26
    queue_per_connection: int = 4
    max_unread_replies: int = 4
    max_connections: int = 4096
    heartbeat_s: float = 5.0
    handshake_s: float = 2.0
    reply_cache_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        for name in ("heartbeat_s", "handshake_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 3600):
                raise ValueError(f"Limits.{name} must be a number of seconds in (0, 3600], got {value!r}")
        for name in ("max_message_bytes", "max_header_bytes", "max_arrays", "max_dims", "max_probes", "max_work",
                     "queue_per_connection", "max_unread_replies", "max_connections", "reply_cache_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


def encode(header: Mapping, arrays: Mapping[str, torch.Tensor | np.ndarray] | None = None) -> bytes:
    """One message: ``header`` (JSON-serialisable, without ``"arrays"``) and named typed arrays."""
    specs, payloads = [], []
    for name, value in (arrays or {}).items():
        a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        kind = a.dtype.name  # any byte order; always little-endian on the wire
        if kind not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {kind} is not one of {sorted(DTYPES)}")
        a = np.ascontiguousarray(a, dtype=DTYPES[kind])
        specs.append({"name": str(name), "dtype": kind, "shape": list(a.shape)})
        payloads.append(a.tobytes())
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return PREFIX.pack(MAGIC, VERSION, len(head)) + head + b"".join(payloads)


def decode(message: bytes, limits: Limits = Limits(), authorise=None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(header, arrays)`` of one message; :class:`ProtocolError` for anything malformed.

    ``authorise(header)``, if given, is called on the header before any array is decoded (the
    server checks the token there: an unauthorised message costs no array decoding).
    """
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a message is bytes, got {type(message).__name__}")
    if isinstance(message, memoryview):
        message = message.cast("B") if message.format != "B" or message.ndim != 1 else message
    if len(message) > limits.max_message_bytes:
        raise ProtocolError(f"message of {len(message)} bytes exceeds the limit of {limits.max_message_bytes}")
    if len(message) < PREFIX.size:
        raise ProtocolError(f"message of {len(message)} bytes is shorter than the {PREFIX.size}-byte prefix")
    magic, version, length = PREFIX.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError("not a physgrad device message (bad magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"protocol version {version} is not supported (supported: {list(SUPPORTED_VERSIONS)})")
    if length > limits.max_header_bytes or PREFIX.size + length > len(message):
        raise ProtocolError(f"header length {length} exceeds the limit ({limits.max_header_bytes}) or the message")
    try:
        header = json.loads(bytes(message[PREFIX.size : PREFIX.size + length]).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"header is not valid UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    specs = header.pop("arrays", [])
    if authorise is not None:
        authorise(header)
    if not isinstance(specs, list) or len(specs) > limits.max_arrays:
        raise ProtocolError(f"'arrays' must be a list of at most {limits.max_arrays} entries")
    arrays: dict[str, torch.Tensor] = {}
    offset = PREFIX.size + length
    for spec in specs:
        name, dtype, shape = _array_spec(spec, limits)
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(message):
            raise ProtocolError(f"array {name!r} {shape} needs {nbytes} bytes, only {len(message) - offset} left")
        a = np.frombuffer(message, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays[name] = torch.from_numpy(a.astype(a.dtype.newbyteorder("="), copy=True))
        offset += nbytes
    if offset != len(message):
        raise ProtocolError(f"{len(message) - offset} trailing byte(s) after the last array")
    return header, arrays


def _no_constant(name: str):
    raise ProtocolError(f"header contains {name}, which JSON does not allow")


def _array_spec(spec, limits: Limits) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise ProtocolError("each array entry must be {'name', 'dtype', 'shape'}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise ProtocolError("array name must be a string of 1..128 characters")
    if dtype not in DTYPES:
        raise ProtocolError(f"array {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > limits.max_dims
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape)):
        raise ProtocolError(f"array {name!r}: shape must be a list of at most {limits.max_dims} integers >= 0")
    return name, DTYPES[dtype], tuple(shape)


def error_reply(request_id, error: BaseException | str, message: str = "") -> bytes:
    """A failure reply: the exception's class name and message (never the request's token)."""
    kind = error if isinstance(error, str) else type(error).__name__
    text = message or ("" if isinstance(error, str) else str(error))
    return encode({"id": request_id if _plain_id(request_id) else None, "ok": False, "error": kind, "message": text[:2000]})


def _plain_id(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53)
