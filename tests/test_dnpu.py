"""Tests of physgrad.systems.devices.dnpu: the DNPU surrogate, its loaders and the built-in synthetic device."""

import json

import numpy as np
import pytest
import torch

from physgrad.errors import ConfigError, DataNotFoundError, RangeError
from physgrad.systems import DNPU, load_dnpu, time_domain_dnpu
from physgrad.systems.devices.dnpu import shared_surrogates

SHARED = shared_surrogates()


def relu_layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 7), (16, 16), (1, 16)]
    return [torch.randn(s, generator=g) for s in shapes], [torch.randn(s[0], generator=g) * 0.1 for s in shapes]


VMIN = [-1.2, -1.2, -1.2, -1.2, -1.2, -0.7, -0.7]
VMAX = [0.6, 0.6, 0.6, 0.6, 0.6, 0.3, 0.3]


def write_npz(path, weights, biases, **meta_extra):
    meta = {"electrodes": [f"ao{i}" for i in range(7)], "voltage_min": VMIN, "voltage_max": VMAX,
            "amplification": 100.0, "activation": "relu", **meta_extra}
    arrays = {"meta": np.array(json.dumps(meta))}
    for i, (w, b) in enumerate(zip(weights, biases)):
        arrays[f"weight{i}"], arrays[f"bias{i}"] = w.numpy(), b.numpy()
    np.savez(path, **arrays)


def reference(weights, biases, v):
    h = v
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = torch.relu(h)
    return 100.0 * h


def random_voltages(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(VMIN), torch.tensor(VMAX)
    return lo + (hi - lo) * torch.rand(n, 7, generator=g)


def test_npz_loader_matches_the_format(tmp_path):
    w, b = relu_layers()
    write_npz(tmp_path / "dev.npz", w, b)
    dnpu = DNPU.from_npz(tmp_path / "dev.npz", input_electrodes=(1, 5))
    v = random_voltages(64)
    x, c = v[:, [1, 5]], v[:, [0, 2, 3, 4, 6]]
    out = dnpu.response({"controls": c[:1]}, x.unsqueeze(0))  # one control setting, 64 inputs
    expected = reference(w, b, torch.stack([c[0, 0].expand(64), x[:, 0], c[0, 1].expand(64), c[0, 2].expand(64),
                                            c[0, 3].expand(64), x[:, 1], c[0, 4].expand(64)], 1))
    assert torch.allclose(out[0], expected, atol=1e-4)
    assert dnpu.input_electrodes == [1, 5] and dnpu.control_electrodes == [0, 2, 3, 4, 6]
    low, high = dnpu.parameter_bounds()["controls"]
    assert torch.allclose(low, torch.tensor([-1.2, -1.2, -1.2, -1.2, -0.7]))
    assert torch.allclose(high, torch.tensor([0.6, 0.6, 0.6, 0.6, 0.3]))


def brainspy_checkpoint(path, weights, biases, numpy_info=False):
    state = {f"raw_model.{2 * i}.weight": w for i, w in enumerate(weights)}
    state.update({f"raw_model.{2 * i}.bias": b for i, b in enumerate(biases)})
    if numpy_info:  # the older info layout, with numpy arrays
        info = {"data_info": {"input_data": {"offset": (np.array(VMIN) + np.array(VMAX)) / 2,
                                             "amplitude": (np.array(VMAX) - np.array(VMIN)) / 2},
                              "processor": {"driver": {"amplification": np.array([100.0])}}}}
        torch.save({**state, "info": info}, path)
    else:
        info = {"electrode_info": {"activation_electrodes": {"electrode_no": 7, "voltage_ranges": [[a, b] for a, b in zip(VMIN, VMAX)]},
                                   "output_electrodes": {"electrode_no": 1, "amplification": [100.0]}},
                "model_structure": {"activation": "relu", "hidden_sizes": [16, 16]}}
        torch.save({"info": info, "model_state_dict": state}, path)


@pytest.mark.parametrize("numpy_info", [False, True])
def test_brainspy_checkpoint_loader(tmp_path, numpy_info):
    w, b = relu_layers(1)
    brainspy_checkpoint(tmp_path / "model.pt", w, b, numpy_info)
    dnpu = DNPU.load(tmp_path / "model.pt")
    write_npz(tmp_path / "same.npz", w, b)
    twin = DNPU.load(tmp_path / "same.npz")
    v = random_voltages(32, 2)
    x = v[:, [3, 4]]
    c = v[0, [0, 1, 2, 5, 6]]
    assert torch.allclose(dnpu.measure({"controls": c}, x), twin.measure({"controls": c}, x), atol=1e-5)
    assert torch.allclose(dnpu.voltage_min, torch.tensor(VMIN), atol=1e-6)


def test_checkpoint_without_ranges_needs_them_given(tmp_path):
    w, b = relu_layers()
    torch.save({f"net.{i}.weight": wi for i, wi in enumerate(w)} | {f"net.{i}.bias": bi for i, bi in enumerate(b)}, tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="voltage ranges"):
        DNPU.from_checkpoint(tmp_path / "bare.pt")
    dnpu = DNPU.from_checkpoint(tmp_path / "bare.pt", voltage_min=VMIN, voltage_max=VMAX, amplification=100.0)
    assert len(dnpu.weights) == 3


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found"):
        DNPU.load(tmp_path / "nowhere.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    with pytest.raises(ConfigError, match="corrupt"):
        DNPU.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "nometa.npz", weight0=np.zeros((1, 7)), bias0=np.zeros(1))
    with pytest.raises(ConfigError, match="'meta'"):
        DNPU.load(tmp_path / "nometa.npz")
    w, b = relu_layers()
    w[1] = torch.zeros(16, 5)
    write_npz(tmp_path / "shapes.npz", w, b)
    with pytest.raises(ConfigError, match="layer 1"):
        DNPU.load(tmp_path / "shapes.npz")
    w, b = relu_layers()
    w[0][0, 0] = float("nan")
    write_npz(tmp_path / "nan.npz", w, b)
    with pytest.raises(ConfigError, match="NaN"):
        DNPU.load(tmp_path / "nan.npz")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="corrupt|weights only"):
        DNPU.load(tmp_path / "junk.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"x": _Evil()}, f)
    with pytest.raises(ConfigError, match="weights only"):
        DNPU.load(tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="format"):
        DNPU.load(tmp_path / "x.onnx")


def test_synthetic_is_seeded_smooth_saturating_and_scaled_like_the_real_surrogates():
    a, b = DNPU.synthetic(0), DNPU.synthetic(0)
    v = random_voltages(4000, 5)
    assert torch.equal(a.net(v), b.net(v))
    assert not torch.equal(a.net(v), DNPU.synthetic(1).net(v))
    v.requires_grad_(True)
    out = a.net(v)
    (g,) = torch.autograd.grad(out.sum(), v)
    q = torch.quantile(out.detach().reshape(-1), torch.tensor([0.01, 0.25, 0.5, 0.75, 0.99]))
    assert -400 < float(q[0]) < -10 and float(q[4]) > 5  # tails of tens to hundreds of nA
    assert float(q[3] - q[1]) < 20  # most outputs near zero, as measured devices are
    assert 1.0 < float(g.abs().median()) < 50.0  # slopes of a few to tens of nA/V
    assert float(a.net(torch.full((1, 7), 50.0)).abs()) <= 300.0  # saturates
    # smooth: second differences along a line are small compared with the first
    line = torch.linspace(-1.2, 0.6, 401)
    vv = torch.zeros(401, 7)
    vv[:, 3] = line
    y = a.net(vv).reshape(-1).double()
    assert float(y.diff().diff().abs().max()) < 0.05 * float(y.diff().abs().max()) + 1e-3


def test_simulate_is_differentiable_and_measure_is_not():
    dnpu = DNPU.synthetic(0)
    c = dnpu.initial_parameters()["controls"].requires_grad_(True)
    x = torch.tensor([[-0.5, 0.1]])
    out = dnpu.simulate({"controls": c}, x)
    (g,) = torch.autograd.grad(out.sum(), c)
    h = 1e-3
    fd = torch.stack([(dnpu.net(dnpu.electrode_voltages((c.detach() + h * e).unsqueeze(0), x.unsqueeze(0)))
                       - dnpu.net(dnpu.electrode_voltages((c.detach() - h * e).unsqueeze(0), x.unsqueeze(0)))).sum() / (2 * h)
                      for e in torch.eye(5)])
    assert torch.allclose(g, fd, rtol=1e-2, atol=1e-2)
    assert not dnpu.measure({"controls": c}, x).requires_grad


def test_per_electrode_input_ranges_are_guarded():
    dnpu = DNPU.synthetic(0, input_electrodes=(3, 5), guard="refuse")
    low, high = dnpu.input_bounds()
    assert torch.allclose(low, torch.tensor([-1.2, -0.7])) and torch.allclose(high, torch.tensor([0.6, 0.3]))
    c = dnpu.initial_parameters()
    dnpu.measure(c, torch.tensor([[0.6, 0.3]]))
    with pytest.raises(RangeError, match="inputs"):
        dnpu.measure(c, torch.tensor([[0.5, 0.4]]))  # fine for electrode 3, out of range for electrode 5
    clip = DNPU.synthetic(0, input_electrodes=(3, 5))
    assert torch.allclose(clip.measure(c, torch.tensor([[0.5, 0.4]])), clip.measure(c, torch.tensor([[0.5, 0.3]])))


@pytest.mark.parametrize("bad, match", [((7,), "distinct indices"), ((1, 1), "distinct"), (tuple(range(7)), "control")])
def test_bad_electrode_assignment(bad, match):
    with pytest.raises(ConfigError, match=match):
        DNPU.synthetic(0, input_electrodes=bad)


def _as_shared_format(dnpu, path):
    """Write a DNPU in the shared .npz surrogate format (weights, biases, JSON meta; no pickle)."""
    meta = {"electrodes": dnpu.electrodes, "voltage_min": dnpu.voltage_min.tolist(), "voltage_max": dnpu.voltage_max.tolist(),
            "amplification": float(dnpu.amplification), "activation": dnpu.activation,
            "layers": [list(w.shape) for w in dnpu.weights], "source": "built-in synthetic"}
    arrays = {f"weight{i}": w.numpy() for i, w in enumerate(dnpu.weights)}
    arrays.update({f"bias{i}": b.numpy() for i, b in enumerate(dnpu.biases)})
    np.savez(path, meta=json.dumps(meta), **arrays)
    return path


# the real surrogates where ../shared has them, and always the built-in one written in their format
@pytest.mark.parametrize("path", [*SHARED, "synthetic"], ids=[*(p.stem for p in SHARED), "synthetic-npz"])
def test_shared_real_surrogates_load_and_behave(path, tmp_path):
    if path == "synthetic":
        path = _as_shared_format(DNPU.synthetic(0), tmp_path / "synthetic.npz")
    dnpu = load_dnpu(path)
    assert len(dnpu.weights) >= 2 and dnpu.amplification > 0
    v = random_voltages(256)
    out = dnpu.net(v)
    assert out.shape == (256, 1) and torch.isfinite(out).all()
    assert float(out.abs().max()) > 1.0
    dev = time_domain_dnpu(dnpu)
    assert dev.measure(dev.initial_parameters(), torch.zeros(2, 2) - 0.3).shape == (1, 2, 1)


def test_time_domain_dnpu_defaults_follow_the_paper():
    dev = time_domain_dnpu()
    assert dev.td_noise.white_psd == 1e-5 and dev.fs == 10_000.0
    assert dev.adc_step == pytest.approx(2000.0 / 2 ** 16)
    assert isinstance(dev.static, DNPU)


# ------------------------------------------------------------------------------ brains-py layouts (issue 11 §6)
def _ranges_layouts():
    vr = [[a, b] for a, b in zip(VMIN, VMAX)]
    off = ((np.array(VMIN) + np.array(VMAX)) / 2).tolist()
    amp = ((np.array(VMAX) - np.array(VMIN)) / 2).tolist()
    return {
        "electrode_info": {"electrode_info": {"activation_electrodes": {"voltage_ranges": vr}}},
        "sampling_driver": {"sampling_configs": {"driver": {"instruments_setup": {"activation_voltage_ranges": vr}}}},
        "processor_driver": {"data_info": {"processor": {"driver": {"instruments_setup": {"activation_voltage_ranges": vr}}}}},
        "data_info_offset": {"data_info": {"input_data": {"offset": off, "amplitude": amp}}},
        "sampling_offset": {"sampling_configs": {"input_data": {"offset": off, "amplitude": amp}}},
        "nested_sampling_offset": {"data_info": {"sampling_configs": {"input_data": {"offset": off, "amplitude": amp}}}},
        "top_offset": {"offset": np.array(off), "amplitude": np.array(amp)},
    }


def _nest(keys, value):
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("amp_path", [
    ("electrode_info", "output_electrodes", "amplification"),
    ("data_info", "processor", "driver", "amplification"),
    ("data_info", "processor", "amplification"),  # the layout that needed a hand-passed amplification=
    ("sampling_configs", "driver", "amplification"),
    ("data_info", "sampling_configs", "driver", "amplification"),
    ("amplification",),
])
@pytest.mark.parametrize("ranges", sorted(_ranges_layouts()))
@pytest.mark.parametrize("wrapped", [True, False])
def test_every_brainspy_layout_gives_amplification_and_ranges(tmp_path, amp_path, ranges, wrapped):
    w, b = relu_layers(3)
    state = {f"raw_model.{2 * i}.weight": wi for i, wi in enumerate(w)}
    state.update({f"raw_model.{2 * i}.bias": bi for i, bi in enumerate(b)})
    info = _merge(_ranges_layouts()[ranges], _nest(amp_path, [42.5] if len(amp_path) > 1 else np.array([42.5])))
    torch.save({"info": info, "model_state_dict": state} if wrapped else {**state, "info": info}, tmp_path / "m.pt")
    dnpu = DNPU.load(tmp_path / "m.pt")
    assert dnpu.amplification == pytest.approx(42.5)
    assert torch.allclose(dnpu.voltage_min, torch.tensor(VMIN), atol=1e-6)
    assert torch.allclose(dnpu.voltage_max, torch.tensor(VMAX), atol=1e-6)


# ------------------------------------------------------------------------------ hostile files (issue 12, loaders)
def _crafted_npy(shape_text: str) -> bytes:
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape_text).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 16


def _hostile(tmp_path):
    import zipfile

    w, b = relu_layers()
    files = {}
    write_npz(tmp_path / "complex.npz", [torch.complex(w[0], torch.zeros_like(w[0])), *w[1:]], b)
    files["complex.npz"] = "complex"
    meta = {"voltage_min": VMIN, "voltage_max": VMAX, "amplification": 1.0}
    np.savez(tmp_path / "pickled.npz", meta=np.array(json.dumps(meta)), weight0=np.array([object()], dtype=object),
             bias0=np.zeros(1))
    files["pickled.npz"] = "objects"
    np.savez(tmp_path / "metalist.npz", meta=np.array(json.dumps([1, 2])), weight0=np.zeros((1, 7)), bias0=np.zeros(1))
    files["metalist.npz"] = "JSON object"
    np.savez(tmp_path / "metanum.npz", meta=np.zeros(3), weight0=np.zeros((1, 7)), bias0=np.zeros(1))
    files["metanum.npz"] = "JSON string"
    bad = dict(meta, voltage_min=["a"] * 7)
    np.savez(tmp_path / "strings.npz", meta=np.array(json.dumps(bad)), weight0=np.zeros((1, 7)), bias0=np.zeros(1))
    files["strings.npz"] = "numbers"
    bad = dict(meta, amplification={"x": 1})
    np.savez(tmp_path / "ampdict.npz", meta=np.array(json.dumps(bad)), weight0=np.zeros((1, 7)), bias0=np.zeros(1))
    files["ampdict.npz"] = "numbers"
    with zipfile.ZipFile(tmp_path / "bigshape.npz", "w") as zf:
        zf.writestr("meta.npy", b"")
        zf.writestr("weight0.npy", _crafted_npy("(100000, 100000)"))
        zf.writestr("bias0.npy", _crafted_npy("(1,)"))
    files["bigshape.npz"] = "JSON string|declares shape|corrupt"
    write_npz(tmp_path / "whole.npz", w, b)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    files["truncated.npz"] = "corrupt"
    torch.save({"info": {"electrode_info": {"activation_electrodes": {"voltage_ranges": [[-1, 1]] * 7},
                                            "output_electrodes": {"amplification": [1.0]}}},
                "model_state_dict": {"l.0.weight": torch.zeros(1, 7, dtype=torch.complex64), "l.0.bias": torch.zeros(1)}},
               tmp_path / "complex.pt")
    files["complex.pt"] = "complex"
    torch.save([1, 2, 3], tmp_path / "list.pt")
    files["list.pt"] = "expected a state dict"
    torch.save({"info": {"electrode_info": {"activation_electrodes": {"voltage_ranges": "wide"},
                                            "output_electrodes": {"amplification": "lots"}}},
                "l.0.weight": torch.zeros(1, 7), "l.0.bias": torch.zeros(1)}, tmp_path / "strings.pt")
    files["strings.pt"] = "numbers"
    torch.save({"info": {"electrode_info": {"activation_electrodes": {"voltage_ranges": [1.0, 2.0, 3.0]},
                                            "output_electrodes": {"amplification": [1.0, 2.0]}}},
                "l.0.weight": torch.zeros(1, 7), "l.0.bias": torch.zeros(1)}, tmp_path / "odd.pt")
    files["odd.pt"] = "pairs"
    torch.save({"info": {"amplification": 1.0, "offset": [0.0] * 7, "amplitude": [1.0] * 6},
                "l.0.weight": torch.zeros(1, 7), "l.0.bias": torch.zeros(1)}, tmp_path / "mismatch.pt")
    files["mismatch.pt"] = "different lengths"
    return files


def test_hostile_files_end_in_a_config_error_naming_the_file(tmp_path):
    for name, match in _hostile(tmp_path).items():
        with pytest.raises(ConfigError, match=match) as info:
            DNPU.load(tmp_path / name)
        assert name in str(info.value), str(info.value)


def test_npz_reads_only_the_keys_it_needs(tmp_path):
    """A 1 MB archive with a 1 GiB unused entry loads without decompressing it (issue 12)."""
    import tracemalloc
    import zipfile

    w, b = relu_layers()
    write_npz(tmp_path / "base.npz", w, b)
    with zipfile.ZipFile(tmp_path / "base.npz") as src, zipfile.ZipFile(tmp_path / "bomb.npz", "w",
                                                                        zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
        with dst.open("unused.npy", "w", force_zip64=True) as fh:  # 256 MiB of zeros, compressed to ~256 kB
            fh.write(np.lib.format.header_data_from_array_1_0(np.zeros(1)) and b"")
            chunk = b"\x00" * 2**20
            for _ in range(256):
                fh.write(chunk)
    assert (tmp_path / "bomb.npz").stat().st_size < 2 * 2**20
    tracemalloc.start()
    dnpu = DNPU.load(tmp_path / "bomb.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(dnpu.weights) == 3 and peak < 16 * 2**20
