"""Who may connect to a device server, and how many: ZeroMQ authentication, keys and tokens.

Every connection is authenticated during ZeroMQ's handshake, *before* the server reads a single
message from it, by a ZAP handler (ZeroMQ's authentication protocol, RFC 27) running in its own
thread:

* **CURVE** (encryption and authentication, `zmq.curve_keypair`): the server has a key pair; each
  client has its own key pair and the server accepts only the public keys it was given. The
  traffic, token included, is encrypted. Required whenever the server binds beyond loopback.
* **PLAIN** (loopback only): the client presents the shared token as its handshake password; a
  wrong token ends the connection at the handshake. (PLAIN is not encrypted; on loopback nothing
  else can read it.)

Either way, a peer without the credentials never gets a message into the server's queues, so an
unauthenticated flood costs the server no memory. The handler also enforces the connection cap:
while ``max_connections`` TCP connections are open (counted by a socket monitor), a new handshake
is answered "temporarily refused" (ZAP status 300); the client retries with backoff. Connections
that never finish their handshake are closed after ``handshake_s`` (ZeroMQ's ``HANDSHAKE_IVL``),
and peers that stop answering heartbeats after ``3 × heartbeat_s``.

Token rules (:func:`check_token`): at least 20 characters, at least 10 distinct ones, not periodic
and with at least 64 bits of (per-character) entropy; a token file readable by group or others is
refused (:func:`read_token_file`).
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import stat
import threading
from collections import Counter
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from ...errors import ConfigError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"physgrad"
PLAIN_USER = b"physgrad"
MIN_TOKEN_CHARS = 20
MIN_TOKEN_DISTINCT = 10
MIN_TOKEN_BITS = 64.0
TOKEN_ENV = "PHYSGRAD_TOKEN"


def check_token(token: str) -> str:
    """``token`` if it is a usable shared secret, else :class:`ConfigError` saying why."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the server token must be a string of at least {MIN_TOKEN_CHARS} characters "
                          "(make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    counts = Counter(token)
    bits = -sum(c * math.log2(c / len(token)) for c in counts.values())
    periodic = any(len(token) % p == 0 and token == token[:p] * (len(token) // p) for p in range(1, len(token) // 2 + 1))
    if len(counts) < MIN_TOKEN_DISTINCT or bits < MIN_TOKEN_BITS or periodic:
        raise ConfigError(f"the server token is too repetitive to be secret ({len(counts)} distinct characters, "
                          f"about {bits:.0f} bits); use a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def read_token_file(path: str | os.PathLike | None, *, create: bool = False) -> str:
    """The token in ``path`` (or ``$PHYSGRAD_TOKEN`` when ``path`` is None), checked by :func:`check_token`.

    With ``create``, a missing file is created with a fresh random token, mode 0600. A file that
    group or others may read is refused (``chmod 600 FILE``).
    """
    if path is None:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise ConfigError(f"give --token-file or set ${TOKEN_ENV}")
        return check_token(token)
    path = Path(path)
    if not path.exists():
        if not create:
            raise ConfigError(f"token file {path} not found")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        print(f"wrote a new random token to {path} (mode 0600); give this file to the clients")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token file {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    return check_token(path.read_text(encoding="utf-8").strip())


def generate_keys(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``NAME.key`` (public, give it away) and ``NAME.key_secret`` (mode 0600) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_public_keys(source) -> set[bytes]:
    """Z85 public keys from a folder of ``*.key`` certificates, one certificate file, or an iterable of keys."""
    if source is None:
        return set()
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        files = sorted(p.glob("*.key")) if p.is_dir() else [p]
        keys = set()
        for f in files:
            public, _ = zmq.auth.load_certificate(str(f))
            keys.add(public)
        if not keys:
            raise ConfigError(f"no client public keys (*.key) in {p}")
        return keys
    return {k.encode() if isinstance(k, str) else bytes(k) for k in source}


def load_key_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``NAME.key_secret`` certificate (refused if group/others may read it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"key file {path} not found (make one: python -m physgrad.systems.remote.gate KEYDIR NAME)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"secret key file {path} is readable by group or others; run: chmod 600 {path}")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ConfigError(f"{path} holds no secret key (give the NAME.key_secret file)")
    return public, secret


def plain_socket(context: zmq.Context, address: str, token: str | None, kind: int = zmq.DEALER) -> zmq.Socket:
    """A raw socket connected to a loopback server with the token as its PLAIN credentials (tests, tools)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if token is not None:
        sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USER)
        sock.setsockopt(zmq.PLAIN_PASSWORD, token.encode("utf-8"))
    sock.connect(address)
    return sock


class Gate(threading.Thread):
    """The server's ZAP handler and connection counter (see the module docstring)."""

    def __init__(self, context: zmq.Context, socket: zmq.Socket, *, token: bytes | None, client_keys: set[bytes] | None,
                 max_connections: int) -> None:
        super().__init__(name="physgrad-device-gate", daemon=True)
        self.token = token
        self.client_keys = client_keys
        self.max_connections = max_connections
        self.open = 0
        self.stats = {"handshakes": 0, "refused_credentials": 0, "refused_full": 0}
        self._halt = threading.Event()
        self._zap = context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        self._monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._socket = socket

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        while not self._halt.is_set():
            ready = dict(poller.poll(100))
            while self._monitor.poll(0):  # connection events first, so the count is current
                event = recv_monitor_message(self._monitor)
                if event["event"] == zmq.EVENT_ACCEPTED:
                    self.open += 1
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self.open = max(0, self.open - 1)
            if self._zap in ready:
                try:
                    self._zap.send_multipart(self._answer(self._zap.recv_multipart()))
                except zmq.ZMQError:  # the context is closing
                    break

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, _address, _identity, mechanism, *credentials = frames
        self.stats["handshakes"] += 1
        if self.open > self.max_connections:
            self.stats["refused_full"] += 1
            return [version, request_id, b"300", b"server full: too many connections", b"", b""]
        ok = False
        if mechanism == b"PLAIN" and self.token is not None and len(credentials) == 2:
            ok = hmac.compare_digest(credentials[1], self.token)
        elif mechanism == b"CURVE" and self.client_keys is not None and len(credentials) == 1:
            ok = z85.encode(credentials[0]) in self.client_keys
        if not ok:
            self.stats["refused_credentials"] += 1
            log.warning("handshake refused (%s): wrong or missing credentials", mechanism.decode("ascii", "replace"))
            return [version, request_id, b"400", b"credentials refused", b"", b""]
        return [version, request_id, b"200", b"OK", b"client", b""]

    def close(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._zap.close(linger=0)


def main(argv: list[str] | None = None) -> None:
    """``python -m physgrad.systems.remote.gate KEYDIR NAME``: write a CURVE key pair."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m physgrad.systems.remote.gate", description="Make a CURVE key pair.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    public, secret = generate_keys(args.folder, args.name)
    print(f"public key: {public} (give it to the other side)\nsecret key: {secret} (mode 0600; keep it here)")


if __name__ == "__main__":
    main()
