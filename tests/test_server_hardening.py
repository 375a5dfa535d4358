"""The device server cannot be starved: authentication before any message, bounded queues, work and replies.

Everything binds 127.0.0.1 only and stops itself.
"""

import os
import socket
import time

import pytest
import torch
import zmq

from physgrad.errors import ConfigError
from physgrad.systems import RandomReservoir
from physgrad.systems.remote.client import RemoteSystem
from physgrad.systems.remote.gate import check_token, generate_keys, plain_socket, read_token_file
from physgrad.systems.remote.protocol import AuthenticationError, BudgetError, Limits, decode, encode, PREFIX, MAGIC
from physgrad.systems.remote.server import DeviceServer
from physgrad.systems.wrappers.base import CommandAudit, SystemWrapper

TOKEN = "hardening-token-7Qw2Zr9XkLp4Vn"


def _ask(sock, message, timeout_ms=5000):
    sock.send(message)
    if not sock.poll(timeout_ms):
        return None
    return decode(sock.recv())[0]


def test_tokens_and_token_files_that_are_not_secret_are_refused(tmp_path):
    for bad in ("short", "a" * 40, "ab" * 20, "0123456789" * 3):
        with pytest.raises(ConfigError, match="token"):
            check_token(bad)
    check_token(TOKEN)
    f = tmp_path / "token"
    f.write_text(TOKEN)
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others.*chmod 600"):
        read_token_file(f)
    f.chmod(0o600)
    assert read_token_file(f) == TOKEN
    made = read_token_file(tmp_path / "new", create=True)
    assert len(made) >= 40 and (tmp_path / "new").stat().st_mode & 0o777 == 0o600


def test_the_token_is_checked_before_any_array_is_decoded(served):
    audit = CommandAudit(RandomReservoir(4, 4))
    server = served(audit)
    ctx = zmq.Context.instance()
    sock = plain_socket(ctx, server.address, TOKEN)
    try:
        # a header announcing a 1 GB array that is not there: decoding arrays first would say so
        import json

        head = json.dumps({"id": 3, "op": "measure", "token": "wrong-token-wrong-token",
                           "arrays": [{"name": "inputs", "dtype": "float32", "shape": [2**28]}]}).encode()
        reply = _ask(sock, PREFIX.pack(MAGIC, 1, len(head)) + head)
        assert reply["ok"] is False and reply["error"] == "AuthenticationError"
    finally:
        sock.close()
    assert audit.commands == 0


def test_unauthenticated_peers_never_reach_the_server(served):
    server = served(RandomReservoir(4, 4))
    ctx = zmq.Context.instance()
    floods = [plain_socket(ctx, server.address, None) for _ in range(3)]  # no credentials
    floods.append(plain_socket(ctx, server.address, "wrong-token-Zq8vR2xK7pLmWn"))
    for sock in floods:
        sock.setsockopt(zmq.SNDHWM, 4)
        for _ in range(4):
            try:
                sock.send(b"\0" * 2**20, zmq.NOBLOCK)
            except zmq.Again:
                break
    deadline = time.monotonic() + 10
    while server.gate.stats["refused_credentials"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    for sock in floods:
        sock.close()
    # the wrong token is refused by the gate; peers with no credentials fail the handshake (wrong mechanism)
    assert server.gate.stats["refused_credentials"] >= 1
    assert server.stats["requests"] == 0  # not one message got in
    with RemoteSystem(server.address, TOKEN) as remote:  # a real client is served as usual
        assert remote.measure(remote.initial_parameters(), torch.zeros(1, 4)).shape == (1, 1, 4)


def test_connection_cap_and_connections_that_never_authenticate(served):
    server = served(RandomReservoir(4, 4), limits=Limits(max_connections=3, handshake_s=0.5))
    ctx = zmq.Context.instance()
    held = [plain_socket(ctx, server.address, TOKEN) for _ in range(3)]
    ping = encode({"id": 1, "op": "ping", "token": TOKEN})
    for sock in held:
        assert _ask(sock, ping)["ok"]
    late = plain_socket(ctx, server.address, TOKEN)
    assert _ask(late, ping, timeout_ms=1000) is None  # the server is full: refused at the handshake
    assert server.gate.stats["refused_full"] >= 1
    late.close()
    held.pop().close()
    with RemoteSystem(server.address, TOKEN, retries=20, backoff=0.05) as remote:  # a slot is free again
        remote.measure(remote.initial_parameters(), torch.zeros(1, 4))
    # a TCP connection that never speaks ZeroMQ is closed after handshake_s
    host, port = server.address.rsplit(":", 1)
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    raw.settimeout(5)
    started = time.monotonic()
    try:
        while raw.recv(4096):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    assert time.monotonic() - started < 4
    raw.close()
    for sock in held:
        sock.close()


def test_work_budget_per_request_and_the_client_splits_to_fit(served):
    audit = CommandAudit(RandomReservoir(8, 16, seed=0))
    server = served(audit, limits=Limits(max_work=20_000))
    assert server.work_per_sample == 8 + 16 + 17
    ctx = zmq.Context.instance()
    sock = plain_socket(ctx, server.address, TOKEN)
    big = encode({"id": 2, "op": "measure", "token": TOKEN},
                 {"param.gain": torch.ones(64, 1), "param.bias": torch.zeros(64, 16), "inputs": torch.zeros(32, 8)})
    reply = _ask(sock, big)
    sock.close()
    assert reply["error"] == "BudgetError" and "budget" in reply["message"] and audit.commands == 0
    assert server.stats["over_budget"] == 1
    with RemoteSystem(server.address, TOKEN) as remote:
        params = {"gain": torch.ones(64, 1), "bias": torch.zeros(64, 16)}
        out = remote.measure(params, torch.zeros(32, 8))
        assert out.shape == (64, 32, 16) and audit.commands > 1  # split into requests inside the budget
        with pytest.raises(BudgetError):
            remote.measure({"gain": torch.ones(1, 1), "bias": torch.zeros(1, 16)}, torch.zeros(600, 8))


def test_replies_a_client_does_not_read_are_bounded(served):
    server = served(RandomReservoir(8, 4096, seed=0), limits=Limits(max_unread_replies=2))
    ctx = zmq.Context.instance()
    sock = plain_socket(ctx, server.address, TOKEN)
    sock.setsockopt(zmq.RCVHWM, 1)
    request = encode({"id": 4, "op": "measure", "token": TOKEN},
                     {"param.gain": torch.ones(8, 1), "param.bias": torch.zeros(8, 4096), "inputs": torch.zeros(32, 8)})
    for _ in range(60):  # 60 replies of 4 MiB, never read
        sock.send(request)
    deadline = time.monotonic() + 60
    while server.stats["requests"] < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats["requests"] == 60 and server.stats["dropped_replies"] > 0
    sock.close()


class SlowOnce(SystemWrapper):
    """The first measurement takes longer than the client waits."""

    def __init__(self, inner, delay):
        super().__init__(inner)
        self.delay, self.calls = delay, 0

    def measure(self, params, inputs):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.inner.measure(params, inputs)


def test_an_abandoned_request_runs_once_and_a_retry_is_answered_from_the_record(served):
    device = SlowOnce(RandomReservoir(4, 4, seed=0), delay=1.0)
    server = served(device)
    with RemoteSystem(server.address, TOKEN, timeout=0.3, retries=20, backoff=0.05) as remote:
        out = remote.measure(remote.initial_parameters(), torch.zeros(2, 4))
        assert out.shape == (1, 2, 4) and remote.reconnects >= 1
        assert remote.queries == 1  # counted once, run once
    assert device.calls == 1 and server.stats["replayed"] >= 1
    # a client that gives up: the server finished the request; the client counts it as done
    device2 = SlowOnce(RandomReservoir(4, 4, seed=0), delay=1.0)
    server2 = served(device2)
    with RemoteSystem(server2.address, TOKEN, timeout=0.2, retries=0) as remote:
        with pytest.raises(Exception, match="no answer"):
            remote.measure(remote.initial_parameters(), torch.zeros(2, 4))
        assert remote.abandoned_queries == 1 and remote.queries == 1
    time.sleep(1.2)
    assert device2.calls == 1


def test_curve_encryption_with_server_and_client_keys(tmp_path, served):
    server_public, server_secret = generate_keys(tmp_path / "server", "server")
    client_public, client_secret = generate_keys(tmp_path / "clients", "lab-pc")
    _, stranger_secret = generate_keys(tmp_path / "stranger", "stranger")
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="CURVE"):
        DeviceServer(RandomReservoir(4, 4), TOKEN, "tcp://0.0.0.0:*", allow_remote=True)  # refused before binding
    server = served(RandomReservoir(4, 4, seed=0), server_key=server_secret, client_keys=tmp_path / "clients")
    assert server.encrypted
    with RemoteSystem(server.address, TOKEN, server_key=server_public, client_key=client_secret) as remote:
        assert remote.measure(remote.initial_parameters(), torch.zeros(1, 4)).shape == (1, 1, 4)
    with pytest.raises(AuthenticationError, match="refused this client's key"):
        RemoteSystem(server.address, TOKEN, server_key=server_public, client_key=stranger_secret, timeout=3, retries=0)
    with pytest.raises(AuthenticationError):  # a PLAIN client cannot talk to a CURVE server
        RemoteSystem(server.address, TOKEN, timeout=3, retries=0)
