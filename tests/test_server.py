"""The device server and its client: a remote device behaves like a local one, and is guarded."""

import logging
import time

import pytest
import torch
import zmq

from physgrad.data import load_dataset
from physgrad.errors import MeasurementError, RangeError
from physgrad.methods import PGT
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.faults import DeviceTimeoutError, FaultInjector
from physgrad.systems.remote.protocol import AuthenticationError, decode, encode
from physgrad.systems.remote.client import RemoteSystem
from physgrad.systems.remote.gate import plain_socket
from physgrad.systems.remote.server import DeviceServer, is_loopback
from physgrad.systems.wrappers.base import CommandAudit, SystemWrapper
from physgrad.training import Trainer

TOKEN = "test-token-0123456789abcdef"


class Recording(SystemWrapper):
    """Remembers every setting applied to the device, in order (measure probes and ramp waypoints)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.sequence = []

    def apply_settings(self, settings):
        self.sequence += [{n: v[i].clone() for n, v in settings.items()} for i in range(next(iter(settings.values())).shape[0])]

    def measure(self, params, inputs):
        self.apply_settings(params)
        return self.inner.measure(params, inputs)


def _raw_request(address, header, arrays=None, token=TOKEN, timeout_ms=5000):
    ctx = zmq.Context.instance()
    sock = plain_socket(ctx, address, TOKEN)  # authenticated at the handshake; ``token`` goes in the header
    try:
        sock.send(encode({"id": 1, "token": token, **header}, arrays))
        assert sock.poll(timeout_ms), "server did not answer"
        return decode(sock.recv())
    finally:
        sock.close()


def test_remote_device_answers_exactly_like_the_local_one(served):
    local = RandomReservoir(8, 16, seed=3)
    server = served(RandomReservoir(8, 16, seed=3))
    with RemoteSystem(server.address, TOKEN) as remote:
        assert remote.parameter_specs.keys() == local.parameter_specs.keys()
        for name, spec in local.parameter_specs.items():
            for a, b in zip(spec.bounds(), remote.parameter_specs[name].bounds()):
                assert torch.equal(a, b)
        g = torch.Generator().manual_seed(0)
        params = {"gain": torch.rand(5, 1, generator=g) * 4, "bias": torch.rand(5, 16, generator=g) * 4 - 2}
        x = torch.rand(3, 8, generator=g)
        assert torch.equal(remote.measure(params, x), local.measure(params, x))
        per_probe = torch.rand(5, 3, 8, generator=g)
        assert torch.equal(remote.measure(params, per_probe), local.measure(params, per_probe))
        assert remote.queries == 10 and remote.samples == 30
        with pytest.raises(TypeError, match="not a differentiable simulator"):
            remote.simulate(params, x)


def test_training_over_the_wire_is_identical_to_training_in_process(served):
    data = load_dataset("digits").subset(train=96, test=64, seed=0)

    def train(device):
        model = ReservoirNet(data.num_features, device, data.num_classes, seed=0)
        method = PGT(num_pairs=4, delta=1e-2, scope="local", seed=0)
        trainer = Trainer(model, method, torch.optim.Adam(model.parameters(), lr=3e-3), batch_size=32, seed=0)
        records = trainer.fit(data, 1)
        return model, records[-1]

    server = served(RandomReservoir(16, 32, seed=1))
    with RemoteSystem(server.address, TOKEN) as remote:
        remote_model, remote_record = train(remote)
    local_model, local_record = train(RandomReservoir(16, 32, seed=1))
    for (n, a), (_, b) in zip(local_model.state_dict().items(), remote_model.state_dict().items()):
        assert torch.equal(a, b), n
    assert remote_record["queries"] == local_record["queries"] > 0
    assert remote_record["test_accuracy"] == local_record["test_accuracy"]


def test_wrong_token_is_refused_and_the_token_is_never_logged(served, caplog):
    caplog.set_level(logging.DEBUG)
    audit = CommandAudit(RandomReservoir(4, 4))
    server = served(audit)
    with pytest.raises(AuthenticationError, match="wrong token"):
        RemoteSystem(server.address, "not-the-token-at-all", timeout=2)
    head, _ = _raw_request(server.address, {"op": "ping"}, token=None)
    assert head["ok"] is False and head["error"] == "AuthenticationError"
    with RemoteSystem(server.address, TOKEN) as remote:
        remote.measure(remote.initial_parameters(), torch.zeros(1, 4))
        assert TOKEN not in repr(remote) and TOKEN not in repr(server)
    assert server.stats["unauthorized"] == 1 and audit.commands == 1  # the wrong header token
    assert server.gate.stats["refused_credentials"] == 1  # the wrong token never got past the handshake
    assert TOKEN not in caplog.text and "not-the-token-at-all" not in caplog.text


def test_server_binds_loopback_only_and_wants_a_real_token():
    device = RandomReservoir(4, 4)
    with pytest.raises(ValueError, match="not a loopback address"):
        DeviceServer(device, TOKEN, "tcp://0.0.0.0:*")
    with pytest.raises(ValueError, match="at least 20 characters"):
        DeviceServer(device, "short", "tcp://127.0.0.1:*")
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://10.0.0.1:5555") and not is_loopback("tcp://*:5555")


@pytest.mark.parametrize(
    "header, arrays, error, match",
    [
        ({"op": "measure"}, {"param.gain": torch.full((1, 1), 9.0), "param.bias": torch.zeros(1, 4), "inputs": torch.zeros(1, 4)},
         "RangeError", "outside the safe range"),
        ({"op": "measure"}, {"param.gain": torch.full((1, 1), float("nan")), "param.bias": torch.zeros(1, 4), "inputs": torch.zeros(1, 4)},
         "RangeError", "non-finite"),
        ({"op": "measure"}, {"param.gain": torch.ones(1, 1), "param.bias": torch.zeros(1, 4), "inputs": torch.full((1, 4), float("inf"))},
         "RangeError", "non-finite"),
        ({"op": "measure"}, {"param.gain": torch.ones(1, 1), "param.bias": torch.zeros(1, 5), "inputs": torch.zeros(1, 4)},
         "ShapeError", r"expected \[K, \*\[4\]\]"),
        ({"op": "measure"}, {"param.gain": torch.ones(1, 1), "inputs": torch.zeros(1, 4)}, "ShapeError", "do not match the device's schema"),
        ({"op": "measure"}, {"param.gain": torch.ones(2, 1), "param.bias": torch.zeros(2, 4), "inputs": torch.zeros(3, 1, 4)},
         "ShapeError", "inputs carry 3 probes"),
        ({"op": "format_disk"}, None, "ProtocolError", "unknown op"),
        ({"op": "ping", "extra": 1}, None, "ProtocolError", "unknown header key"),
        ({"op": "ping", "id": "x"}, None, "ProtocolError", "'id' must be an integer"),
    ],
)
def test_invalid_commands_never_reach_the_device(served, header, arrays, error, match):
    audit = CommandAudit(RandomReservoir(4, 4))
    server = served(audit)
    head, _ = _raw_request(server.address, header, arrays)
    assert head["ok"] is False and head["error"] == error
    assert __import__("re").search(match, head["message"]), head["message"]
    assert audit.commands == 0 and server.stats["device_calls"] == 0
    assert _raw_request(server.address, {"op": "ping"})[0]["ok"] is True


def test_ramp_limits_are_enforced_by_the_server_and_followed_by_the_client(served):
    device = Recording(RandomReservoir(4, 6, seed=0))
    server = served(device, max_step={"bias": 0.1, "gain": 0.25})
    far = {"param.gain": torch.ones(1, 1), "param.bias": torch.full((1, 6), 1.5), "inputs": torch.zeros(1, 4)}
    head, _ = _raw_request(server.address, {"op": "measure"}, far)
    assert head["ok"] is False and "exceeds its ramp limit max_step=0.1" in head["message"] and not device.sequence
    with RemoteSystem(server.address, TOKEN) as remote:
        assert remote.max_step == {"bias": 0.1, "gain": 0.25}
        g = torch.Generator().manual_seed(0)
        twin = RandomReservoir(4, 6, seed=0)
        for _ in range(3):  # jumps across the whole range, and probes far from each other
            params = {"gain": torch.rand(4, 1, generator=g) * 4, "bias": torch.rand(4, 6, generator=g) * 4 - 2}
            x = torch.rand(2, 4, generator=g)
            assert torch.allclose(remote.measure(params, x), twin.measure(params, x), atol=1e-6)  # split into segments
        assert remote.ramp_commands > 0
    steps = {"gain": 0.25, "bias": 0.1}
    previous = device.inner.initial_parameters()
    for setting in device.sequence:
        for n, limit in steps.items():
            assert float((setting[n] - previous[n]).abs().max()) <= limit * (1 + 1e-6)
        previous = setting
    assert len(device.sequence) > 3 * 4 + 20 * 2  # many waypoints were needed


def test_client_retries_with_backoff_then_gives_up(served):
    waits = []
    with pytest.raises(DeviceTimeoutError, match="no answer"):
        RemoteSystem("tcp://127.0.0.1:9", TOKEN, timeout=0.05, retries=2, backoff=0.1, sleep=waits.append)
    assert waits == [0.1, 0.2]
    # a device that times out now and then behind the server: the client retries and gets answers
    flaky = FaultInjector(RandomReservoir(4, 4, seed=0), timeout=0.5, seed=1)
    server = served(flaky)
    with RemoteSystem(server.address, TOKEN, retries=20, backoff=0.0) as remote:
        for _ in range(10):
            remote.measure(remote.initial_parameters(), torch.zeros(2, 4))
    assert flaky.injected["timeout"] > 0 and remote.queries == 10


def test_device_errors_are_reported_not_fatal(served):
    broken = FaultInjector(RandomReservoir(4, 4, seed=0), nan=1.0)

    class Strict(SystemWrapper):  # a driver that raises on a bad reading
        def measure(self, params, inputs):
            out = self.inner.measure(params, inputs)
            if not torch.isfinite(out).all():
                raise MeasurementError("ADC overflow")
            return out

    server = served(Strict(broken))
    with RemoteSystem(server.address, TOKEN, retries=0) as remote:
        with pytest.raises(MeasurementError, match="ADC overflow"):
            remote.measure(remote.initial_parameters(), torch.zeros(2, 4))
        with pytest.raises(RangeError, match="outside the safe range"):
            remote._request("measure", {"param.gain": torch.full((1, 1), -1.0), "param.bias": torch.zeros(1, 4), "inputs": torch.zeros(1, 4)})
    assert _raw_request(server.address, {"op": "ping"})[0]["ok"] is True


class Slow(SystemWrapper):
    """10 ms per measurement: a flood of them takes long enough to be overtaken."""

    def measure(self, params, inputs):
        time.sleep(0.01)
        return self.inner.measure(params, inputs)


def test_a_flooding_client_neither_crashes_nor_starves_the_server(served):
    server = served(Slow(RandomReservoir(32, 256, seed=0)))
    ctx = zmq.Context.instance()
    flood = plain_socket(ctx, server.address, TOKEN)
    heavy = encode({"id": 5, "op": "measure", "token": TOKEN},
                   {"param.gain": torch.ones(32, 1), "param.bias": torch.zeros(32, 256), "inputs": torch.rand(32, 32)})
    n_flood = 150
    for i in range(n_flood):
        flood.send(heavy if i % 2 else b"garbage" * (i % 50))
    flood.send_multipart([b"two", b"frames"])
    time.sleep(0.05)
    head, _ = _raw_request(server.address, {"op": "ping"}, timeout_ms=60000)
    # the server survives the flood and answers a second client (how long a new client waits under floods and
    # connection exhaustion is measured by benchmarks.attack_suite, not asserted here: it depends on the load)
    assert head["ok"] is True
    answers = 0
    while flood.poll(3000) and answers < n_flood + 1:
        flood.recv()
        answers += 1
    flood.close()
    # every message got an answer (a result or an error), except replies dropped because the client
    # did not read them while it flooded (bounded unread replies: counted, never queued without end)
    assert answers + server.stats["dropped_replies"] == n_flood + 1
    assert server.stats["errors"] >= n_flood // 2 + 1


def test_physgrad_serve_command_creates_a_private_token_and_never_prints_it(tmp_path, capsys):
    from physgrad.cli import main

    token_file = tmp_path / "token"
    assert main(["serve", "--device", "mlp", "--address", "tcp://127.0.0.1:*", "--token-file", str(token_file), "--duration", "0.2"]) == 0
    token = token_file.read_text().strip()
    assert len(token) >= 32 and (token_file.stat().st_mode & 0o777) == 0o600
    out = capsys.readouterr()
    assert "serving mlp at tcp://127.0.0.1:" in out.out and token not in out.out + out.err
    assert main(["serve", "--address", "tcp://0.0.0.0:5555", "--token-file", str(token_file)]) == 2
    assert "not a loopback address" in capsys.readouterr().err
