"""The client of a device server: a remote device that is itself a :class:`PhysicalSystem`.

``RemoteSystem(address, token)`` asks the server (:mod:`physgrad.systems.remote.server`) for the
device's schema — parameters, safe ranges, defaults, input and output shapes, ramp limits — and
then behaves like any local device: ``measure`` sends the probes and returns the answers, every
method and the trainer work unchanged, and the cost counters count what was measured. It never
offers ``simulate`` (no gradients cross the wire).

Reliability:

* every request has a ``timeout``; a request that times out, or whose device reports a timeout
  or a disconnect, is retried after ``backoff·2^i`` seconds (capped at ``max_backoff``), at most
  ``retries`` times, on a fresh socket (the "lazy pirate" pattern of the ZeroMQ guide), after
  re-reading the device's current setting; then :class:`DeviceTimeoutError` /
  :class:`DeviceDisconnectedError` (both :class:`MeasurementError`: the trainer skips the step);
* **ramps**: when the device declares a ``max_step`` for a parameter, the client keeps track of
  the device's current setting and, before any probe that would move a parameter further than
  that in one command, sends ``ramp`` waypoints on the straight line to it (inside the safe box,
  which is convex), ``ceil(distance / max_step)`` steps; probes that are close to each other
  (the usual case: ``θ ± δP``) go in one ``measure``;
* commands are split so that no message exceeds the server's limits.

The token is kept private: it is not part of ``repr`` and never logged.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from typing import Callable

import torch
import zmq
import zmq.auth as zmq_auth

from ...errors import ConfigError, MeasurementError, RangeError, ShapeError
from ..base import RAMP_MARGIN, ParameterSpec, PhysicalSystem, ramp_waypoints
from ..wrappers.faults import TRANSIENT, DeviceDisconnectedError, DeviceTimeoutError, backoff_delay
from .gate import PLAIN_USER, load_key_pair
from .protocol import VERSION, AuthenticationError, BudgetError, ProtocolError, decode, encode

log = logging.getLogger(__name__)

ERRORS = {
    "RangeError": RangeError, "ShapeError": ShapeError, "MeasurementError": MeasurementError,
    "DeviceTimeoutError": DeviceTimeoutError, "DeviceDisconnectedError": DeviceDisconnectedError,
    "AuthenticationError": AuthenticationError, "ProtocolError": ProtocolError, "ConfigError": ConfigError,
    "BudgetError": BudgetError,
}
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class RemoteSystem(PhysicalSystem):
    """A device served by :class:`~physgrad.systems.remote.server.DeviceServer` at ``address``.

    Parameters
    ----------
    address, token:
        The server's ZeroMQ endpoint and shared token.
    timeout:
        Seconds to wait for each answer.
    retries, backoff, max_backoff:
        Retry policy for timeouts and disconnects (see the module docstring).
    guard:
        Client-side range guard (``"clip"`` or ``"refuse"``); the server refuses out-of-range
        commands whatever the client does.
    sleep:
        The function that waits between retries (tests pass a recorder).
    """

    differentiable = False

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        guard: str = "clip",
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        server_key: bytes | str | None = None,
        client_key=None,
    ) -> None:
        if not timeout > 0 or retries < 0 or not 0 <= backoff <= max_backoff:
            raise ValueError(f"need timeout > 0, retries >= 0, 0 <= backoff <= max_backoff; got {timeout}, {retries}, {backoff}, {max_backoff}")
        self.address = address
        self.__token = token
        self.timeout, self.retries = float(timeout), int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.sleep = sleep
        self.reconnects = 0
        self.ramp_commands = 0
        self.abandoned_queries = 0  # queries of measure commands given up after retries (they may have run: counted)
        self._ids = itertools.count(1)
        self._routing_id = b"pg" + os.urandom(14)  # kept across reconnects: the server recognises a retried request
        self._curve = None
        if server_key is not None:
            if client_key is None:
                raise ConfigError("CURVE needs this client's key pair too (client_key: a NAME.key_secret file or (public, secret))")
            pair = load_key_pair(client_key) if isinstance(client_key, (str, os.PathLike)) else tuple(client_key)
            if isinstance(server_key, os.PathLike) or (isinstance(server_key, str) and os.path.exists(server_key)):
                server_key = zmq_auth.load_certificate(str(server_key))[0]
            self._curve = (server_key.encode() if isinstance(server_key, str) else bytes(server_key), *pair)
        self._monitor: zmq.Socket | None = None
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        head, arrays = self._request_with_retries("describe")
        if head.get("protocol") != VERSION:
            raise ProtocolError(f"server speaks protocol {head.get('protocol')}, this client {VERSION}")
        device = head["device"]
        specs, steps = [], {}
        for p in device["parameters"]:
            name = p["name"]
            specs.append(ParameterSpec(name, tuple(p["shape"]), arrays[f"low.{name}"], arrays[f"high.{name}"],
                                       default=arrays[f"default.{name}"], unit=p.get("unit", ""),
                                       max_step=p.get("max_step"), step_delay_s=float(p.get("step_delay_s", 0.0)),
                                       settle_s=float(p.get("settle_s", 0.0))))
            if p.get("max_step") is not None:
                steps[name] = float(p["max_step"])
        self.device_name = device["name"]
        self.max_step = steps
        self.limits = head["limits"]
        input_range = tuple(float(v) for v in arrays["input_range"]) if "input_range" in arrays else None
        self._input_bounds = ((arrays["input_low"], arrays["input_high"]) if "input_low" in arrays and "input_high" in arrays
                              else None)
        super().__init__(device["input_shape"], device["output_shape"], specs, input_range=input_range, guard=guard,
                         seconds_per_query=float(device["seconds_per_query"]), seed=seed)
        self.current = self._read_state()

    def __repr__(self) -> str:
        return f"RemoteSystem({self.device_name} at {self.address!r})"

    checks_ramp_locally = False  # the client plans ramps per segment (below); the server enforces them

    def apply_settings(self, settings: dict[str, torch.Tensor]) -> None:
        """Ramp waypoints go to the server as one ``ramp`` command (it applies them with the declared delays)."""
        self._with_retries(lambda: self._request("ramp", {f"param.{n}": torch.as_tensor(v).reshape(-1, *self.parameter_specs[n].shape).to(torch.float32)
                                                          for n, v in settings.items()}))
        self.current = {n: torch.as_tensor(v).reshape(-1, *self.parameter_specs[n].shape)[-1].to(torch.float32) for n, v in settings.items()}

    def ramp_sleep(self, seconds: float) -> None:
        """The server waits between waypoints; the client does not wait again."""

    def input_bounds(self, dtype: torch.dtype = torch.float32):
        """The per-element input limits the server published (it refuses inputs outside them)."""
        if self._input_bounds is None:
            return super().input_bounds(dtype)
        return tuple(t.to(dtype) for t in self._input_bounds)

    def guard_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        bounds = self.input_bounds(inputs.dtype)
        if bounds is None or self._input_bounds is None:
            return super().guard_inputs(inputs)
        return self.guard("inputs", inputs, *bounds)

    # ------------------------------------------------------------------ device
    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        k = inputs.shape[0]
        shared = inputs.stride(0) == 0 or k == 1  # the same batch for every probe: send it once
        settings = {n: v.detach().to(torch.float32) for n, v in params.items()}
        x = (inputs[0] if shared else inputs).detach().to(torch.float32)
        outputs = []
        batch = x.shape[-len(self.input_shape) - 1]
        for start, stop in self._segments(settings, batch):
            seg = {n: v[start:stop] for n, v in settings.items()}
            seg_x = x if shared else x[start:stop]
            measure_id = next(self._ids)  # the same id on every retry: the server answers a repeat from its record
            try:
                outputs.append(self._with_retries(lambda: self._ramp_and_measure(seg, seg_x, measure_id)))
            except TRANSIENT:
                # given up: the server runs every request it received, so this one may have reached the device
                self.abandoned_queries += stop - start
                self._count(stop - start, batch)
                raise
        out = torch.cat(outputs) if outputs else torch.zeros(0)
        return out.to(inputs.dtype)

    def _segments(self, settings: dict[str, torch.Tensor], batch: int) -> list[tuple[int, int]]:
        """Probe ranges sent as one ``measure``: split where a ramp is needed and by the message limits."""
        k = next(iter(settings.values())).shape[0] if settings else 1
        per_probe = batch * math.prod(self.output_shape) * 4 + 64
        cap = max(1, min(int(self.limits["max_probes"]), (int(self.limits["max_message_bytes"]) // 2) // per_probe))
        if "max_work" in self.limits:  # the server's work budget per request
            cap = max(1, min(cap, int(self.limits["max_work"]) // max(1, batch * int(self.limits["work_per_sample"]))))
        jumps = torch.zeros(k, dtype=torch.bool)
        for n, step in self.max_step.items():
            seq = settings[n].double()
            if k > 1:
                jumps[1:] |= ((seq[1:] - seq[:-1]).abs().reshape(k - 1, -1).amax(1) > step * (1 - RAMP_MARGIN))
        cuts = [0] + [i for i in range(1, k) if jumps[i]] + [k]
        segments = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            segments += [(s, min(s + cap, b)) for s in range(a, b, cap)]
        return segments

    def _ramp_and_measure(self, settings: dict[str, torch.Tensor], x: torch.Tensor, measure_id: int | None = None) -> torch.Tensor:
        if settings:
            self._ramp_to({n: v[0] for n, v in settings.items()})
        head, arrays = self._request("measure", {**{f"param.{n}": v for n, v in settings.items()}, "inputs": x},
                                     request_id=measure_id)
        if settings:
            self.current = {n: v[-1].clone() for n, v in settings.items()}
        out = arrays.get("outputs")
        k = next(iter(settings.values())).shape[0] if settings else (x.shape[0] if x.dim() == len(self.input_shape) + 2 else 1)
        batch = x.shape[-len(self.input_shape) - 1]
        if out is None or tuple(out.shape) != (k, batch, *self.output_shape):
            raise MeasurementError(f"server answered shape {None if out is None else tuple(out.shape)}, expected {(k, batch, *self.output_shape)}")
        return out

    def _ramp_to(self, target: dict[str, torch.Tensor]) -> None:
        """Send waypoints so that no parameter moves more than its ``max_step`` per command (the target comes with the measure)."""
        waypoints = ramp_waypoints(self.parameter_specs, self.current, target)
        w = next(iter(waypoints.values())).shape[0] if waypoints else 1
        if w <= 1:
            return
        cap = int(self.limits["max_probes"])
        for start in range(0, w - 1, cap):
            chunk = {n: v[start : min(start + cap, w - 1)].to(torch.float32) for n, v in waypoints.items()}
            self._request("ramp", {f"param.{n}": v for n, v in chunk.items()})
            self.ramp_commands += 1
            self.current = {n: v[-1].clone() for n, v in chunk.items()}
        log.debug("ramped in %d step(s)", w)

    # ------------------------------------------------------------------ transport
    def _read_state(self) -> dict[str, torch.Tensor]:
        return self._with_retries(self._read_state_once, resync=False)

    def _request_with_retries(self, op: str, arrays: dict | None = None):
        return self._with_retries(lambda: self._request(op, arrays), resync=False)

    def _with_retries(self, action, resync: bool = True):
        stale = False
        for attempt in range(self.retries + 1):
            try:
                if stale and resync:  # where the device is now: a lost reply may have moved it
                    self.current = self._read_state_once()
                return action()
            except TRANSIENT as e:
                stale = True
                if attempt == self.retries:
                    log.warning("device server failed %d time(s) in a row, giving up: %s", attempt + 1, e)
                    raise
                wait = backoff_delay(attempt, self.backoff, self.max_backoff)
                log.info("%s; retry %d/%d in %.3g s", e, attempt + 1, self.retries, wait)
                if wait:
                    self.sleep(wait)
        raise AssertionError("unreachable")

    def _read_state_once(self) -> dict[str, torch.Tensor]:
        _, arrays = self._request("state")
        return {n: arrays[f"param.{n}"].to(torch.float32) for n in self.parameter_specs}

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self._routing_id)
            sock.setsockopt(zmq.ZAP_DOMAIN, b"physgrad")
            if self._curve is not None:
                server_public, public, secret = self._curve
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            else:
                sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USER)
                sock.setsockopt(zmq.PLAIN_PASSWORD, self.__token.encode("utf-8"))
            self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
            sock.connect(self.address)
            self._socket = sock
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._close_monitor()
            self._socket.close(linger=0)
            self._socket = None
            self.reconnects += 1

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None

    def _handshake_refused(self) -> None:
        """Raise if the server refused this client at the handshake (monitor event), else return."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == 300:
                self._reset()
                raise DeviceDisconnectedError(f"the device server at {self.address} is full (too many connections); retrying")
            self._reset()
            what = "key" if self._curve is not None else "token"
            raise AuthenticationError(f"the device server at {self.address} refused this client's {what} at the handshake "
                                      "(missing or wrong token)")

    def _request(self, op: str, arrays: dict | None = None, request_id: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """One request and its reply (one attempt); raises the server's error as a physgrad error."""
        request_id = next(self._ids) if request_id is None else request_id
        message = encode({"id": request_id, "op": op, "token": self.__token}, arrays)
        sock = self._connect()
        sock.send(message)
        deadline = time.monotonic() + self.timeout
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(int(math.ceil(left * 1000)))) if left > 0 else {}
            if self._monitor in ready:
                self._handshake_refused()
            if sock not in ready:
                if time.monotonic() < deadline:
                    continue
                self._reset()  # a late reply must not be read as the answer to a later request
                raise DeviceTimeoutError(f"no answer from the device server at {self.address} within {self.timeout:g} s ({op})")
            try:
                head, out = decode(sock.recv())
            except ProtocolError as e:
                self._reset()
                raise DeviceDisconnectedError(f"garbled answer from {self.address}: {e}") from None
            if head.get("id") == request_id or head.get("id") is None:
                break  # (an id of None: the server could not read our request at all)
        if not head.get("ok"):
            kind, text = str(head.get("error")), str(head.get("message", ""))
            raise ERRORS.get(kind, MeasurementError)(f"device server: {kind}: {text}" if kind not in ERRORS else text)
        return head, out

    def close(self) -> None:
        """Release the connection."""
        if self._socket is not None:
            self._close_monitor()
            self._socket.close(linger=0)
            self._socket = None
        self._context.destroy(linger=0)  # closes every socket of this client's context (monitors, abandoned ones) first

    def __enter__(self) -> "RemoteSystem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
