"""A device server: any :class:`~physgrad.systems.base.PhysicalSystem` behind a ZeroMQ endpoint.

In a lab the device sits behind its own computer; training runs elsewhere. ``physgrad serve``
(or :class:`DeviceServer`) puts the device's driver behind a network endpoint and
:class:`~physgrad.systems.remote.client.RemoteSystem` talks to it, so every method and the trainer work
over the wire unchanged. The wire format is :mod:`physgrad.systems.remote.protocol` (versioned, typed
arrays, no pickle); docs/devices/server.md documents it.

The server is the device's guardian, so it trusts no client:

* it binds to loopback unless ``allow_remote=True``, and beyond loopback only with CURVE
  encryption (server and client keys, :mod:`.gate`);
* every connection authenticates during ZeroMQ's handshake (CURVE keys, or on loopback the token
  as PLAIN password) before any message is read, and at most ``max_connections`` are open;
  connections that do not authenticate within ``handshake_s`` or stop answering heartbeats are
  dropped (:mod:`.gate`);
* every request must carry the shared token too, compared in constant time (``hmac.compare_digest``)
  on the header *before* any array is decoded; the token is never logged or echoed;
* per connection at most ``queue_per_connection`` requests wait and ``max_unread_replies``
  replies (more are dropped and counted); one request's work, ``probes × batch × work_per_sample``,
  is bounded by ``max_work``;
* a request is always finished, even if its client has gone (a half-applied command is worse
  than a finished one); its reply is kept (the last 4 per client, ``reply_cache_bytes`` in all) so
  that a retry of the same request (same client identity, id and bytes) is answered from the
  record instead of touching the device again;
* ZeroMQ's ``MAXMSGSIZE`` drops oversized frames at the transport; :class:`~protocol.Limits` bound
  the header, the arrays, their dimensions and the probes per command, and a reply must fit too;
* every command is checked against the device's declared schema, its safe ranges (in the device's
  float32, refusing — never clipping), its input range and its ramp limits *before* the device is
  touched; a failing check is answered with an error and nothing reaches the device;
* one request is handled at a time with bounded work; a ROUTER socket fair-queues requests
  across clients, so a client that floods or sends garbage delays others by at most its turn,
  and no request can raise out of the loop.

**Ramp limits.** A device may declare a maximum change per command for each parameter
(``max_step``, e.g. volts per command for a fragile electrode). The server tracks the device's
current setting (its defaults at start) and refuses any command whose settings, applied in probe
order, move a parameter further than its ``max_step`` in one step; the client inserts ``ramp``
waypoints (:class:`~physgrad.systems.remote.client.RemoteSystem`). After a failed ``measure`` the device
is assumed to be at the command's last setting (drivers apply probes in order).

(Length: the serving loop, the request checks and the ``physgrad serve`` command line stay in one
module so that every check a command passes reads top to bottom in one place; authentication
and keys live in :mod:`.gate`.)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch
import zmq

from ...errors import ConfigError, PhysgradError, RangeError, ShapeError
from ..base import PhysicalSystem, check_command
from .gate import TOKEN_ENV, Gate, check_token, load_key_pair, load_public_keys, read_token_file
from .protocol import (
    OPS, VERSION, AuthenticationError, BudgetError, Limits, ProtocolError, decode, encode, error_reply,
)

log = logging.getLogger(__name__)

DEVICE_DTYPE = torch.float32
REQUEST_KEYS = {"id", "op", "token"}
CACHED_OPS = ("measure", "ramp")  # device commands whose replies are kept for a retry of the same request


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (tcp to loopback, ipc, inproc)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    m = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+|\*)", address)
    if not m:
        return False
    host = m.group(1)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DeviceServer:
    """Serve ``system`` at ``address`` to clients holding ``token`` (see the module docstring).

    Parameters
    ----------
    system:
        The device (a lab's driver subclassing ``PhysicalSystem``, or a simulator).
    token:
        The shared secret (:func:`.gate.check_token`: at least 20 characters, not repetitive).
    address:
        ZeroMQ endpoint; ``tcp://127.0.0.1:*`` picks a free port (see :attr:`address`).
    max_step:
        Ramp limit per parameter (``{name: step}``) or one for all; it can only tighten the limits
        the device's ``ParameterSpec`` declares. Default: the system's own ``max_step`` attribute
        if it has one, else the specs' limits. Refused (:class:`ConfigError`) if the device has
        no ``apply_settings``.
    limits:
        Message and resource limits (:class:`~physgrad.systems.remote.protocol.Limits`).
    allow_remote:
        Permit a non-loopback address (then ``server_key`` and ``client_keys`` are required).
    server_key, client_keys:
        CURVE: the server's key pair (a ``NAME.key_secret`` file or ``(public, secret)``) and the
        authorised clients' public keys (a folder of ``*.key`` files or a list); without them a
        loopback server authenticates clients by the token at the handshake (PLAIN).
    """

    def __init__(
        self,
        system: PhysicalSystem,
        token: str,
        address: str = "tcp://127.0.0.1:5555",
        *,
        max_step: Mapping[str, float] | float | None = None,
        limits: Limits = Limits(),
        allow_remote: bool = False,
        server_key: str | os.PathLike | tuple[bytes, bytes] | None = None,
        client_keys=None,
    ) -> None:
        check_token(token)
        if not allow_remote and not is_loopback(address):
            raise ConfigError(f"refusing to bind {address!r}: not a loopback address (pass allow_remote=True deliberately)")
        if not is_loopback(address) and server_key is None:
            raise ConfigError(f"binding {address!r} beyond loopback needs CURVE encryption: give server_key (a key pair, "
                              "e.g. keys/server.key_secret) and client_keys (the clients' public keys); see docs/devices/server.md")
        curve = None
        if server_key is not None:
            curve = load_key_pair(server_key) if isinstance(server_key, (str, os.PathLike)) else tuple(server_key)
            if not client_keys:
                raise ConfigError("CURVE needs the clients' public keys (client_keys: a folder of *.key files or a list of keys)")
        self.encrypted = curve is not None
        self.system = system
        self._token = token.encode("utf-8")
        self.limits = limits
        self.max_step = _max_steps(system, getattr(system, "max_step", None) if max_step is None else max_step)
        for n, spec in system.parameter_specs.items():  # the device's own limits hold whatever the server is told
            if spec.max_step is not None:
                self.max_step[n] = min(spec.max_step, self.max_step.get(n, math.inf))
        if self.max_step and not system.can_ramp:
            raise ConfigError(
                f"ramp limits {self.max_step} cannot be honoured: {type(system).__name__} has no apply_settings(), so "
                "ramp waypoints would never reach it. Implement apply_settings on the driver, or serve it without max_step"
            )
        self.specs = {n: replace(spec, max_step=self.max_step.get(n)) for n, spec in system.parameter_specs.items()}
        self.current = {n: v.to(DEVICE_DTYPE) for n, v in system.initial_parameters().items()}
        self.work_per_sample = _work_per_sample(system)
        self.stats = {"requests": 0, "ok": 0, "errors": 0, "unauthorized": 0, "device_calls": 0, "dropped_replies": 0,
                      "replayed": 0, "over_budget": 0}
        self._replies: dict[bytes, list[tuple[int, bytes, bytes]]] = {}  # peer -> [(id, digest, reply)], oldest first
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes + 64)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, limits.queue_per_connection)
        self._socket.setsockopt(zmq.SNDHWM, limits.max_unread_replies)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply that cannot be queued raises: dropped and counted
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting under its identity takes over
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, int(limits.heartbeat_s * 1000))
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(3 * limits.heartbeat_s * 1000))
        self._socket.setsockopt(zmq.HANDSHAKE_IVL, int(limits.handshake_s * 1000))
        self._socket.setsockopt(zmq.ZAP_DOMAIN, b"physgrad")
        if curve is not None:
            self._socket.setsockopt(zmq.CURVE_SERVER, 1)
            self._socket.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
        else:
            self._socket.setsockopt(zmq.PLAIN_SERVER, 1)
        _raise_file_limit(limits.max_connections + 256)
        self.gate = Gate(self._context, self._socket, token=None if curve else self._token,
                         client_keys=load_public_keys(client_keys) if curve else None, max_connections=limits.max_connections)
        self.gate.start()
        try:
            self._socket.bind(address)
        except zmq.ZMQError:
            self.gate.close()
            self._socket.close(linger=0)
            self._context.term()
            raise
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("device server for %s listening on %s", type(system).__name__, self.address)

    def __repr__(self) -> str:  # never shows the token
        return f"DeviceServer({type(self.system).__name__}, address={self.address!r})"

    # ------------------------------------------------------------------ the loop
    def serve(self, *, max_requests: int | None = None, duration: float | None = None, poll_ms: int = 100) -> None:
        """Answer requests until :meth:`stop`, ``max_requests`` handled or ``duration`` seconds passed."""
        deadline = None if duration is None else time.monotonic() + duration
        handled = 0
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if max_requests is not None and handled >= max_requests:
                break
            if not poller.poll(poll_ms):
                continue
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            handled += 1
            reply_frames = self._route([f.buffer for f in frames])
            del frames
            if reply_frames is not None:
                try:
                    self._socket.send_multipart(reply_frames, zmq.NOBLOCK)
                except zmq.ZMQError as e:  # the peer is gone or not reading its replies: drop this one
                    self.stats["dropped_replies"] += 1
                    log.info("reply dropped (%s)", e)

    def start(self) -> "DeviceServer":
        """Serve in a background thread (for tests and in-process use)."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        threads = torch.get_num_threads()

        def run() -> None:
            torch.set_num_threads(threads)  # OpenMP settings are per thread: keep the caller's
            self.serve()

        self._thread = threading.Thread(target=run, name="physgrad-device-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.gate.close()
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> "DeviceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _route(self, frames: list[bytes]) -> list[bytes] | None:
        """Split the ROUTER envelope: DEALER ``[id, msg]`` or REQ ``[id, b"", msg]``."""
        if len(frames) == 2:
            return [frames[0], self.handle(frames[1], peer=bytes(frames[0]))]
        if len(frames) == 3 and len(frames[1]) == 0:
            return [frames[0], b"", self.handle(frames[2], peer=bytes(frames[0]))]
        if not frames:
            return None
        self.stats["requests"] += 1
        self.stats["errors"] += 1
        return [frames[0], error_reply(None, "ProtocolError", "a request is exactly one frame")]

    # ------------------------------------------------------------------ one request
    def handle(self, message: bytes, peer: bytes | None = None) -> bytes:
        """The reply to one request message. Never raises (any failure becomes an error reply).

        The token is checked on the header before any array is decoded. A device command
        (``measure``, ``ramp``) that repeats the last few requests of the same client (same id,
        same bytes: a retry after a lost reply) is answered from the kept reply and not run again.
        """
        with self._lock:
            self.stats["requests"] += 1
            request_id = None
            try:
                if len(message) > self.limits.max_message_bytes:
                    raise ProtocolError(f"message of {len(message)} bytes exceeds the limit of {self.limits.max_message_bytes}")
                seen: dict = {}

                def authorise(header: dict) -> None:
                    seen["id"] = header.get("id")
                    self._authorise(header)

                header, arrays = None, None
                try:
                    header, arrays = decode(message, self.limits, authorise=authorise)
                finally:
                    request_id = seen.get("id")
                op = header.get("op")
                digest = None
                if peer is not None and op in CACHED_OPS:
                    digest = hashlib.blake2b(message, digest_size=16).digest()
                    for rid, dig, reply in self._replies.get(peer, ()):
                        if rid == request_id and dig == digest:
                            self.stats["replayed"] += 1
                            return reply
                reply = self._dispatch(header, arrays)
                self.stats["ok"] += 1
                if digest is not None:
                    self._keep(peer, request_id, digest, reply)
                return reply
            except AuthenticationError as e:
                self.stats["unauthorized"] += 1
                self.stats["errors"] += 1
                log.warning("request refused: %s", e)
                return error_reply(request_id, e)
            except Exception as e:  # noqa: BLE001 - a bad request or a device failure must never stop the server
                self.stats["errors"] += 1
                if isinstance(e, BudgetError):
                    self.stats["over_budget"] += 1
                if not isinstance(e, PhysgradError):
                    log.warning("request failed with %s: %s", type(e).__name__, e)
                else:
                    log.info("request refused: %s: %s", type(e).__name__, e)
                return error_reply(request_id, e)

    def _keep(self, peer: bytes, request_id, digest: bytes, reply: bytes) -> None:
        """Keep a device command's reply (the last 4 per client, at most ``reply_cache_bytes`` in all)."""
        if len(reply) > self.limits.reply_cache_bytes:
            return
        kept = self._replies.setdefault(peer, [])
        kept.append((request_id, digest, reply))
        self._cached_bytes += len(reply)
        while len(kept) > 4:
            self._cached_bytes -= len(kept.pop(0)[2])
        while self._cached_bytes > self.limits.reply_cache_bytes or len(self._replies) > 2 * self.limits.max_connections:
            oldest = next(iter(self._replies))
            entries = self._replies[oldest]
            if entries:
                self._cached_bytes -= len(entries.pop(0)[2])
            if not entries:
                del self._replies[oldest]
        self._replies[peer] = self._replies.pop(peer, kept)  # most recently used last

    def _authorise(self, header: dict) -> None:
        given = header.get("token")
        given = given.encode("utf-8", "surrogatepass") if isinstance(given, str) else b""
        if not hmac.compare_digest(given, self._token):
            raise AuthenticationError("missing or wrong token")

    def _dispatch(self, header: dict, arrays: dict[str, torch.Tensor]) -> bytes:
        extra = set(header) - REQUEST_KEYS
        if extra:
            raise ProtocolError(f"unknown header key(s) {sorted(extra)}")
        request_id = header.get("id")
        if not (isinstance(request_id, int) and not isinstance(request_id, bool) and 0 <= request_id < 2**53):
            raise ProtocolError("'id' must be an integer in [0, 2**53)")
        op = header.get("op")
        if op not in OPS:
            raise ProtocolError(f"unknown op {op!r}; the server knows {list(OPS)}")
        if op in ("describe", "state", "ping") and arrays:
            raise ProtocolError(f"{op!r} takes no arrays")
        if op == "ping":
            return encode({"id": request_id, "ok": True})
        if op == "describe":
            head, arrs = self.describe()
            return encode({"id": request_id, "ok": True, **head}, arrs)
        if op == "state":
            return encode({"id": request_id, "ok": True}, {f"param.{n}": v for n, v in self.current.items()})
        if op == "ramp":
            settings = self._settings(arrays, allow_inputs=False)
            self._check_ramp(settings)
            if not self.system.can_ramp:
                raise RangeError(f"{type(self.system).__name__} cannot be ramped (no apply_settings); refused")
            self.stats["device_calls"] += 1
            try:
                self.system.ramp(settings)  # waypoint by waypoint, with the declared step delay and settling time
            finally:
                self.current = {n: v.to(DEVICE_DTYPE).clone() for n, v in self.system.setting.items()}
            return encode({"id": request_id, "ok": True})
        return self._measure(request_id, arrays)

    def describe(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The device's schema: shapes, parameters with safe ranges and ramp limits, server limits."""
        s = self.system
        params = [{"name": n, "shape": list(spec.shape), "unit": spec.unit, "max_step": self.max_step.get(n),
                   "step_delay_s": spec.step_delay_s, "settle_s": spec.settle_s}
                  for n, spec in s.parameter_specs.items()]
        arrays: dict[str, torch.Tensor] = {}
        for n, spec in s.parameter_specs.items():
            low, high = spec.bounds(DEVICE_DTYPE)
            arrays[f"low.{n}"], arrays[f"high.{n}"] = low, high
            arrays[f"default.{n}"] = spec.default_tensor(DEVICE_DTYPE)
        if s.input_range is not None:
            arrays["input_range"] = torch.tensor(s.input_range, dtype=torch.float64)
        bounds = s.input_bounds(DEVICE_DTYPE)
        if bounds is not None:  # per-element input limits: the server refuses inputs outside them
            arrays["input_low"], arrays["input_high"] = bounds
        head = {
            "protocol": VERSION,
            "device": {"name": type(s).__name__, "input_shape": list(s.input_shape), "output_shape": list(s.output_shape),
                       "seconds_per_query": s.seconds_per_query, "parameters": params},
            "limits": {"max_message_bytes": self.limits.max_message_bytes, "max_probes": self.limits.max_probes,
                       "max_work": self.limits.max_work, "work_per_sample": self.work_per_sample},
        }
        return head, arrays

    # ------------------------------------------------------------------ validation
    def _settings(self, arrays: dict[str, torch.Tensor], allow_inputs: bool) -> dict[str, torch.Tensor]:
        """``{name: [K, *shape]}`` in the device dtype, every value finite and inside its safe range."""
        specs = self.system.parameter_specs
        expected = {f"param.{n}" for n in specs} | ({"inputs"} if allow_inputs else set())
        if set(arrays) != expected:
            raise ShapeError(f"arrays {sorted(arrays)} do not match the device's schema {sorted(expected)}")
        settings, k = {}, None
        for n, spec in specs.items():
            value = arrays[f"param.{n}"]
            if value.dim() != len(spec.shape) + 1 or tuple(value.shape[1:]) != spec.shape:
                raise ShapeError(f"parameter {n!r}: expected [K, *{list(spec.shape)}], got {list(value.shape)}")
            if k is None:
                k = value.shape[0]
            elif value.shape[0] != k:
                raise ShapeError(f"parameter {n!r} has {value.shape[0]} settings, others have {k}")
            settings[n] = check_command(self.specs[n], value.to(DEVICE_DTYPE))  # finite, in range (refused, never clipped)
        if k is not None and not 1 <= k <= self.limits.max_probes:
            raise ShapeError(f"{k} settings in one command; the server accepts 1..{self.limits.max_probes}")
        return settings

    def _check_ramp(self, settings: dict[str, torch.Tensor]) -> None:
        """Refuse any step (from the current setting, then probe to probe) larger than ``max_step``."""
        for n in self.max_step:
            try:
                check_command(self.specs[n], settings[n], previous=self.current[n])
            except RangeError as e:
                raise RangeError(f"{e} (send 'ramp' waypoints first)") from None

    def _measure(self, request_id: int, arrays: dict[str, torch.Tensor]) -> bytes:
        s = self.system
        settings = self._settings(arrays, allow_inputs=True)
        inputs = arrays["inputs"].to(DEVICE_DTYPE)
        n_in = len(s.input_shape)
        if inputs.dim() not in (n_in + 1, n_in + 2) or tuple(inputs.shape[inputs.dim() - n_in:]) != s.input_shape:
            raise ShapeError(f"inputs must be [B, *{list(s.input_shape)}] or [K, B, *{list(s.input_shape)}], got {list(inputs.shape)}")
        k = next(iter(settings.values())).shape[0] if settings else (inputs.shape[0] if inputs.dim() == n_in + 2 else 1)
        if inputs.dim() == n_in + 2 and inputs.shape[0] != k:
            raise ShapeError(f"inputs carry {inputs.shape[0]} probes but the settings carry {k}")
        b = inputs.shape[-n_in - 1]
        if not 1 <= k <= self.limits.max_probes or b < 1:
            raise ShapeError(f"need 1..{self.limits.max_probes} probes and a batch of at least 1, got {k} and {b}")
        work = k * b * self.work_per_sample
        if work > self.limits.max_work:
            raise BudgetError(f"{k} probes × a batch of {b} × {self.work_per_sample} per sample = {work} work units, over "
                              f"the server's budget of {self.limits.max_work} per request; send fewer probes or a smaller batch")
        reply_bytes = k * b * math.prod(s.output_shape) * 4
        if reply_bytes > self.limits.max_message_bytes - 4096:
            raise ShapeError(f"the answer would need {reply_bytes} bytes, over the message limit; send fewer probes")
        if not torch.isfinite(inputs).all():
            raise RangeError("inputs: non-finite value(s); refused, nothing reached the device")
        bounds = s.input_bounds(DEVICE_DTYPE)
        if bounds is not None:
            lo, hi = bounds
            outside = (inputs < lo) | (inputs > hi)
            if outside.any():
                worst = float(torch.maximum(lo - inputs, inputs - hi).max())
                raise RangeError(f"inputs: {int(outside.sum())} value(s) outside the input limits (worst by {worst:.4g}); "
                                 "refused, never clipped; nothing reached the device")
        self._check_ramp(settings)
        self.stats["device_calls"] += 1
        try:
            out = s.measure(settings, inputs)
        finally:
            if settings:
                self.current = {n: v[-1].clone() for n, v in settings.items()}
        return encode({"id": request_id, "ok": True, "queries": k, "samples": k * b}, {"outputs": out.to(DEVICE_DTYPE)})


def _raise_file_limit(wanted: int) -> None:
    """Let this process hold ``wanted`` open files (connections), as far as the hard limit allows."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def _work_per_sample(system: PhysicalSystem) -> int:
    """The device's declared cost of one sample (``work_per_sample``), default: inputs + outputs + parameters."""
    declared = getattr(system, "work_per_sample", None)
    if declared is not None:
        return max(1, int(declared))
    return (math.prod(system.input_shape) + math.prod(system.output_shape)
            + sum(spec.numel for spec in system.parameter_specs.values()))


def _max_steps(system: PhysicalSystem, max_step) -> dict[str, float]:
    if max_step is None:
        return {}
    names = list(system.parameter_specs)
    steps = dict(max_step) if isinstance(max_step, Mapping) else {n: max_step for n in names}
    unknown = set(steps) - set(names)
    if unknown:
        raise ConfigError(f"max_step names unknown parameter(s) {sorted(unknown)}; the device has {names}")
    for n, v in steps.items():
        if not (isinstance(v, (int, float)) and 0 < v < math.inf):
            raise ConfigError(f"max_step for {n!r} must be a finite number > 0, got {v!r}")
    return {n: float(v) for n, v in steps.items()}


# ---------------------------------------------------------------------------------- command line
def build_device(name: str, seed: int = 0, **kwargs) -> PhysicalSystem:
    """A device from the one device registry (:mod:`physgrad.systems.registry`): a built-in name or module:Class."""
    from ..registry import accepts, is_builtin, make_device

    if is_builtin(name) and accepts(name, "seed"):
        kwargs.setdefault("seed", seed)
    return make_device(name, **kwargs)


DEVICES = ("reservoir", "dnpu", "mlp")


def read_or_create_token(path: str | os.PathLike | None) -> str:
    """The token from ``path`` (created with a fresh random token, mode 0600, if missing) or $PHYSGRAD_TOKEN.

    Refused: a file readable by group or others, a token too short or too repetitive (see :mod:`.gate`).
    """
    return read_token_file(path, create=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``physgrad serve``."""
    from ..registry import json_object

    parser.add_argument("--device", default="reservoir", help="built-in device name (physgrad devices) or module:Class")
    parser.add_argument("--device-args", type=json_object, default={}, help="JSON object of the device's keyword arguments")
    parser.add_argument("--address", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (loopback by default)")
    parser.add_argument("--port", type=int, default=None, help="serve on tcp://127.0.0.1:PORT (overrides --address)")
    parser.add_argument("--token-file", type=Path, default=None, help=f"shared token file (created if missing); else ${TOKEN_ENV}")
    parser.add_argument("--max-step", type=float, default=None, help="ramp limit: largest change of any parameter per command")
    parser.add_argument("--faults", type=float, default=0.0, help="inject every kind of fault at this rate (testing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--allow-remote", action="store_true", help="permit a non-loopback address (needs --server-key and --client-keys)")
    parser.add_argument("--server-key", type=Path, default=None, help="CURVE secret key file of the server (NAME.key_secret)")
    parser.add_argument("--client-keys", type=Path, default=None, help="folder of the authorised clients' CURVE public keys (*.key)")


def serve_from_args(args: argparse.Namespace) -> None:
    """Run ``physgrad serve`` with parsed options."""
    device = build_device(args.device, args.seed, **args.device_args)
    if args.port is not None:
        args.address = f"tcp://127.0.0.1:{args.port}"
    if args.faults:
        from ..wrappers.faults import FaultInjector

        device = FaultInjector.uniform(device, args.faults, seed=args.seed)
    token = read_or_create_token(args.token_file)
    server = DeviceServer(device, token, args.address, max_step=args.max_step, allow_remote=args.allow_remote,
                          server_key=getattr(args, "server_key", None), client_keys=getattr(args, "client_keys", None))
    print(f"serving {args.device} at {server.address} (Ctrl-C to stop)", flush=True)
    try:
        server.serve(duration=args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"server stopped: {server.stats}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m physgrad.systems.remote.server", description="Serve a simulated device.")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    serve_from_args(args)


if __name__ == "__main__":
    main()
