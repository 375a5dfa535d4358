"""QCoDeS instruments as devices, and the QCoDeS record of a training (issue 15).

No hardware and no mocks of QCoDeS: real QCoDeS instruments and parameters (the simulated ones of
``physgrad.systems.lab.sim``: their readings come from the built-in synthetic DNPU), a real SQLite
database in a temporary folder.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from qcodes.dataset import connect, load_by_run_spec  # noqa: E402
from qcodes.instrument import Instrument  # noqa: E402

from benchmarks import qcodes_gate  # noqa: E402
from benchmarks.hge_gates import GATES, gate_inputs  # noqa: E402
from physgrad.errors import ConfigError, MeasurementError, RangeError  # noqa: E402
from physgrad.systems.devices.dnpu import DNPU, time_domain_dnpu  # noqa: E402
from physgrad.systems.lab import QCoDeSSystem, QCoDeSWaveformSystem, system_from_station  # noqa: E402
from physgrad.systems.lab.sim import SimAWG, SimDAC, SimDigitizer, SimDMM  # noqa: E402
from physgrad.training.record import Recorder  # noqa: E402

AND = torch.tensor(GATES["and"], dtype=torch.float32)


@pytest.fixture(autouse=True)
def _close_instruments():
    yield
    Instrument.close_all()


def _probes(device, k: int, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo, hi = device.parameter_bounds()["controls"]
    ilo, ihi = device.input_bounds()
    return lo + (hi - lo) * torch.rand(k, lo.numel(), generator=g), ilo + (ihi - ilo) * torch.rand(b, ilo.numel(), generator=g)


def _flat(data: dict, name: str) -> np.ndarray:
    """One recorded column as a flat array (numeric rows, or ragged array rows)."""
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in data[name][name]])


# ------------------------------------------------------------------------------------ the extra
def test_import_physgrad_does_not_import_qcodes():
    code = "import physgrad, physgrad.systems, physgrad.systems.lab, physgrad.training, sys; print('qcodes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ static
def test_static_system_reads_ranges_units_ramp_from_the_parameters_and_answers_like_the_device():
    system, dac, dmm, twin = qcodes_gate.static_rig(step=0.05)
    spec = system.parameter_specs["controls"]
    assert spec.unit == "V" and spec.max_step == 0.05 and spec.step_delay_s == 0.0
    low, high = twin.parameter_bounds()["controls"]
    assert torch.equal(spec.bounds()[0], low) and torch.equal(spec.bounds()[1], high)
    assert system.record_names["outputs"] == ["dmm_v"] and system.record_names["output_units"] == ["nA"]
    controls, x = _probes(twin, 6, 4)
    answer = system.measure({"controls": controls}, x)
    assert torch.equal(answer, twin.measure({"controls": controls}, x))  # bit for bit
    assert (system.queries, system.samples, dmm.reads) == (6, 24, 24)
    assert system.device_seconds > 0 and system.device_seconds == system.wall_seconds
    # every value that reached the DAC, ramp waypoints included, is inside its validator and at most one step apart
    for name, values in dac.history.items():
        p = dac.parameters[name]
        v = np.array(values)
        assert ((v >= p.vals.min_value) & (v <= p.vals.max_value)).all()
        assert np.abs(np.diff(v)).max() <= 0.05 + 1e-9


def test_every_dnpu_surrogate_answers_through_qcodes_as_in_process():
    """The built-in synthetic device, and the shared real surrogates where the checkout has them."""
    from physgrad.systems.devices.dnpu import shared_surrogates

    for number, path in enumerate([None, *shared_surrogates()]):
        system, dac, dmm, twin = qcodes_gate.static_rig(None if path is None else str(path), prefix=f"s{number}_")
        controls, x = _probes(twin, 3, 4, seed=number)
        assert torch.equal(system.measure({"controls": controls}, x), twin.measure({"controls": controls}, x)), path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(-3.0, 3.0) | st.just(math.nan), min_size=5, max_size=5), st.integers(0, 2**16))
def test_nothing_outside_a_validator_or_faster_than_step_ever_reaches_the_dac(values, seed):
    Instrument.close_all()
    system, dac, dmm, twin = qcodes_gate.static_rig(step=0.05)
    _, x = _probes(twin, 1, 2, seed=seed)
    target = torch.tensor(values, dtype=torch.float32)
    low, high = system.parameter_bounds()["controls"]
    try:
        system.measure({"controls": target}, x)
        assert torch.isfinite(target).all() and ((target >= low) & (target <= high)).all()
    except RangeError:
        assert not (torch.isfinite(target).all() and ((target >= low) & (target <= high)).all())
        assert dac.sets == 0
    for name, history in dac.history.items():
        v, p = np.array(history), dac.parameters[name]
        assert ((v >= p.vals.min_value) & (v <= p.vals.max_value)).all()
        assert (np.abs(np.diff(v)) <= 0.05 + 1e-12).all()


def test_settle_time_is_waited_and_counted_in_device_time():
    waits = []
    system, *_ = qcodes_gate.static_rig()
    system.sleep = waits.append
    system.settle_s = 0.25
    _, x = _probes(system, 1, 3)
    system.measure({"controls": system.initial_parameters()["controls"]}, x)
    assert waits == [0.25, 0.25, 0.25]


def test_out_of_range_or_nan_setting_is_refused_and_nothing_is_sent():
    system, dac, dmm, twin = qcodes_gate.static_rig()
    controls, x = _probes(twin, 3, 2)
    bad = controls.clone()
    bad[2, 0] = 5.0  # the third probe: the whole batch is refused before the first value is sent
    sets = dac.sets
    with pytest.raises(RangeError, match="controls"):
        system.measure({"controls": bad}, x)
    bad[2, 0] = math.nan
    with pytest.raises(RangeError, match="non-finite"):
        system.measure({"controls": bad}, x)
    with pytest.raises(RangeError, match="inputs"):
        system.measure({"controls": controls}, x + 10.0)
    assert dac.sets == sets and dmm.reads == 0 and system.queries == 0


def test_unbounded_validator_is_refused_with_a_clear_error():
    dac = SimDAC("udac", 3, bounded=False)
    dmm = SimDMM("udmm", dac, ["ch1"], [], DNPU.synthetic())
    with pytest.raises(ConfigError, match=r"'udac_ch1'.*no finite bounds.*Numbers\(min_value"):
        QCoDeSSystem([dac.ch1], [], [dmm.v])
    awg = SimAWG("uawg", 2, bounded=False)
    with pytest.raises(ConfigError, match="no finite bounds"):
        QCoDeSWaveformSystem([awg.ch1], [], dmm.v, sample_rate=1000.0)


def test_ramp_faster_than_step_or_inter_delay_is_refused():
    system, dac, dmm, _ = qcodes_gate.static_rig(step=0.05, inter_delay=0.001)
    params = [dac.parameters[n] for n in ("ch1", "ch2")]
    with pytest.raises(ConfigError, match="max_step=0.5 ramps faster than the instrument allows"):
        QCoDeSSystem(params, [], [dmm.v], max_step=0.5)
    with pytest.raises(ConfigError, match="step_delay_s=0.0001 s ramps faster"):
        QCoDeSSystem(params, [], [dmm.v], step_delay_s=1e-4)
    slower = QCoDeSSystem(params, [], [dmm.v], max_step=0.01, step_delay_s=0.002)
    assert slower.parameter_specs["controls"].max_step == 0.01
    # a waveform whose samples move faster than the AWG's slew limit is refused before anything is played
    wsystem, awg, dig, _ = qcodes_gate.waveform_rig(max_slew=100.0)
    n = 50
    waves = wsystem.initial_parameters()["controls"].expand(n, -1).clone()
    waves[25:, 0] += 0.2  # a 0.2 V jump in one sample at 10 kHz: 2000 V/s
    x = gate_inputs(wsystem)
    with pytest.raises(RangeError, match="ramp limit"):  # the one command check, or the AWG's slew check
        wsystem.measure_waveform({"controls": waves}, x)
    assert dig.acquisitions == 0 and wsystem.queries == 0
    with pytest.raises(ConfigError, match="faster than the instrument allows"):
        QCoDeSWaveformSystem([awg.ch1], [], dig.trace, max_slew=1e6)


def test_a_raising_get_is_a_counted_measurement_error_and_is_recorded(tmp_path):
    system, dac, dmm, twin = qcodes_gate.static_rig()
    controls, x = _probes(twin, 4, 2)
    dmm.fail_reads = {5}  # probe 2, data point 1
    with Recorder(tmp_path, "faults", "dnpu") as rec:
        rec.attach(system)
        with pytest.raises(MeasurementError, match="dmm_v.*failed at probe 2, data point 1"):
            system.measure({"controls": controls}, x)
        assert system.queries == 3 and system.failed_reads == 1
        answer = system.measure({"controls": controls[:1]}, x)  # the device carries on
        assert torch.isfinite(answer).all()
    assert rec.recorded_settings == system.queries == 4 and rec.failed == 1
    data = rec.load().get_parameter_data()
    failed, out = _flat(data, "failed"), _flat(data, "dmm_v")
    assert failed.sum() == 1 and np.isnan(out[failed == 1]).all() and np.isfinite(out[failed == 0]).all()
    assert out.size == 3 * 2 + 2


def test_a_non_finite_reading_is_a_measurement_error():
    from qcodes.parameters import Parameter

    system, dac, _, _ = qcodes_gate.static_rig()
    nan = Parameter("nan_reading", get_cmd=lambda: float("nan"), set_cmd=False)
    broken = QCoDeSSystem([dac.ch1, dac.ch2], [], [nan])
    with pytest.raises(MeasurementError, match="non-finite"):
        broken.measure({"controls": broken.initial_parameters()["controls"]}, torch.zeros(1, 0))
    assert broken.failed_reads == 1 and broken.queries == 1


# ------------------------------------------------------------------------------------ training
def _check_record(rec: Recorder, system, experiment: str) -> None:
    ds = load_by_run_spec(captured_run_id=rec.captured_run_id, experiment_name=experiment, conn=connect(str(rec.path)))
    assert ds.exp_name == experiment and ds.guid == rec.guid
    data = ds.get_parameter_data()
    queries = np.unique(_flat(data, "query"))
    assert len(queries) == rec.recorded_settings == system.queries
    for p in list(system.controls.params) + list(system.inputs.params):
        values = _flat(data, p.full_name)
        assert ((values >= p.vals.min_value) & (values <= p.vals.max_value)).all(), p.full_name
    assert qcodes_gate.out_of_range(ds, list(system.controls.params) + list(system.inputs.params)) == 0


def test_pgt_trains_a_gate_through_qcodes_like_the_in_process_device(tmp_path):
    system, dac, dmm, twin = qcodes_gate.static_rig()
    with Recorder(tmp_path, "and-gate", "dnpu") as rec:
        rec.attach(system)
        controls, curve = qcodes_gate.train(system, qcodes_gate.pgt(3), AND, 3, 12, 0.1, recorder=rec)
    twin_controls, twin_curve = qcodes_gate.train(twin, qcodes_gate.pgt(3), AND, 3, 12, 0.1)
    assert torch.equal(controls, twin_controls) and curve == twin_curve
    assert curve[-1] < curve[0]
    assert system.queries == 12 * (2 * 4 + 1) == twin.queries
    _check_record(rec, system, "and-gate")
    xr = rec.load().to_xarray_dataset()
    assert {"epoch", "step", "probe", "sample"} <= set(xr.coords) and "dac_ch1" in xr and xr["dac_ch1"].attrs["units"] == "V"
    assert int(xr["step"].max()) == 11 and int(xr["probe"].max()) == 8
    assert np.allclose(xr["loss"].values, curve)  # follow(): the loss of every step, against training_step
    import matplotlib

    matplotlib.use("Agg")
    from qcodes.dataset import plot_dataset

    axes, _ = plot_dataset(rec.load())  # QCoDeS draws the 1-D part: loss, queries, device time per step
    assert any("loss" in ax.get_ylabel() for ax in axes)


def test_hge_trains_a_gate_through_qcodes_like_the_in_process_device(tmp_path):
    system, awg, dig, twin = qcodes_gate.waveform_rig()
    assert system.fs == 10_000.0 and system.bandwidth_hz == twin.bandwidth_hz and system.settle_s == twin.settle_s
    with Recorder(tmp_path / "hge.db", "and-gate-hge", "dnpu-td") as rec:
        rec.attach(system)
        controls, curve = qcodes_gate.train(system, qcodes_gate.hge(0), AND, 0, 3, 0.03, recorder=rec)
    twin_controls, twin_curve = qcodes_gate.train(twin, qcodes_gate.hge(0), AND, 0, 3, 0.03)
    assert torch.equal(controls, twin_controls) and curve == twin_curve
    assert system.queries == twin.queries and system.device_seconds == pytest.approx(twin.device_seconds)
    assert isinstance(system, type(twin))  # still a TimeDomainDevice while recorded
    _check_record(rec, system, "and-gate-hge")
    assert "t" in rec.load().to_xarray_dataset().coords


def test_recorder_records_any_device_the_same_way(tmp_path):
    device = DNPU.synthetic()
    controls, x = _probes(device, 5, 3)
    with Recorder(tmp_path, "sim", "synthetic") as rec:
        rec.attach(device)
        rec.position(epoch=2, step=7)
        device.measure({"controls": controls}, x)
        device.measure({"controls": controls[0]}, x)
    assert rec.recorded_settings == device.queries == 6
    xr = rec.load().to_xarray_dataset()
    assert {"controls_0", "input_1", "output_0"} <= set(xr.data_vars)
    frame = rec.load().to_pandas_dataframe_dict()["output_0"].reset_index()
    assert set(frame["epoch"]) == {2} and set(frame["step"]) == {7} and sorted(set(frame["probe"])) == list(range(6))
    assert rec.load().to_pandas_dataframe_dict()["controls_4"].shape == (6 * 3, 1)
    got = frame.sort_values(["probe", "sample"])["output_0"].to_numpy()
    want = torch.cat([device.measure({"controls": controls}, x), device.measure({"controls": controls[0]}, x)])
    assert np.allclose(got, want.reshape(-1).numpy())
    assert "measure" not in device.__dict__  # detached when closed


def test_physgrad_train_with_a_station_file_records_the_training(tmp_path):
    from physgrad.cli import main

    path = tmp_path / "station.yaml"
    path.write_text(STATION)
    rc = main(["train", "--station", str(path), "--controls", "dac.ch1,dac.ch2,dac.ch3,dac.ch6,dac.ch7",
               "--inputs", "dac.ch4,dac.ch5", "--outputs", "dmm.v", "--guard", "clip", "--method", "pgt",
               "--scope", "global", "--epochs", "2", "--train-samples", "16", "--test-samples", "8", "--batch-size", "8",
               "--num-pairs", "2", "--record", str(tmp_path / "lab"), "--out", str(tmp_path / "run")])
    assert rc == 0
    ds = load_by_run_spec(captured_run_id=1, conn=connect(str(tmp_path / "lab" / "physgrad.db")))
    assert (ds.exp_name, ds.sample_name) == ("pgt-global", "station")  # the config's label, the station's name
    assert '"method": "pgt"' in ds.metadata["config"]
    data = ds.get_parameter_data()
    assert len(np.unique(_flat(data, "query"))) >= 4 * 5  # four training steps of 2K + 1 settings each
    steps = set(np.concatenate([np.asarray(v).reshape(-1) for v in data["query"]["step"]]).tolist())
    epochs = set(np.concatenate([np.asarray(v).reshape(-1) for v in data["query"]["epoch"]]).tolist())
    assert {0.0, 1.0, 2.0, 3.0} <= steps and {0.0, 1.0} <= epochs  # every setting carries its step and epoch
    assert main(["train", "--record", str(tmp_path / "x"), "--out", str(tmp_path / "r2")]) == 2  # --record needs --station


# ------------------------------------------------------------------------------------ station
STATION = """
instruments:
  dac:
    type: physgrad.systems.lab.sim.SimDAC
    init:
      channels: 7
    parameters:
      ch1: {limits: [-1.2, 0.6], step: 0.1, inter_delay: 0.0}
      ch2: {limits: [-1.2, 0.6], step: 0.1}
      ch3: {limits: [-1.2, 0.6], step: 0.1}
      ch4: {limits: [-1.2, 0.6]}
      ch5: {limits: [-1.2, 0.6]}
      ch6: {limits: [-0.7, 0.3], step: 0.1}
      ch7: {limits: [-0.7, 0.3], step: 0.1}
  dmm:
    type: physgrad.systems.lab.sim.SimDMM
    init:
      dac: dac
      controls: [ch1, ch2, ch3, ch6, ch7]
      inputs: [ch4, ch5]
      device: synthetic
"""


def test_system_from_station_file(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text(STATION)
    system = system_from_station(path, "dac.ch1,dac.ch2,dac.ch3,dac.ch6,dac.ch7", "dac.ch4,dac.ch5", "dmm.v", settle_s=0.0)
    spec = system.parameter_specs["controls"]
    assert spec.max_step == pytest.approx(0.1)
    low, high = spec.bounds(torch.float64)
    assert (low >= torch.tensor([-1.2, -1.2, -1.2, -0.7, -0.7], dtype=torch.float64)).all()
    assert float(high[0]) <= 0.6 and float(high[0]) > 0.6 - 1e-6  # float32 inside the validator
    low, high = system.input_bounds()
    x = torch.where(torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.bool), high, low)
    out = system.measure({"controls": system.initial_parameters()["controls"]}, x)
    assert out.shape == (1, 4, 1) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="no instrument 'scope'"):
        system_from_station(path, ["scope.ch1"], [], ["dmm.v"])
    with pytest.raises(ConfigError, match="not found"):
        system_from_station(tmp_path / "missing.yaml", ["dac.ch1"], [], ["dmm.v"])


def test_benchmark_contract(tmp_path):
    out = tmp_path / "figures.json"
    figures = qcodes_gate.main(["--quick", "--steps", "3", "--threads", "1", "--out", str(out),
                                "--plot", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").stat().st_size > 0
    import json

    written = json.loads(out.read_text())
    for key in ("recorded_settings", "device_queries", "out_of_range_recorded", "same_as_in_process",
                "gate_found_pgt", "gate_found_hge"):
        assert key in written
    assert written["recorded_settings"] == written["device_queries"] > 0
    assert written["out_of_range_recorded"] == 0 and written["same_as_in_process"] is True
    assert figures["gate"] == "and"
