"""Every command a training run applies, and every answer it reads, in a QCoDeS dataset.

A lab keeps its measurements in QCoDeS's SQLite database and opens them with QCoDeS's own tools
(``load_by_run_spec``, ``plot_dataset``, export to xarray/pandas/netCDF). :class:`Recorder` puts a
training run there: one QCoDeS *run* per training, in the experiment and sample named by the
config, through QCoDeS's ``Measurement`` API. It watches any
:class:`~physgrad.systems.base.PhysicalSystem` (a QCoDeS one, a simulator, a remote device) without
changing its type, so methods that check the type (HGE wants a time-domain device) still run::

    with Recorder("runs/lab", experiment="xor-gate", sample="dnpu-7") as rec:
        rec.attach(system)                      # from now on every measure() is recorded
        rec.follow(method, steps_per_epoch=1)   # each method.backward() is one step
        ... train as usual ...
    ds = rec.load()                             # a qcodes DataSet; ds.to_xarray_dataset()

Layout: coordinates (setpoints) ``epoch``, ``step``,
``probe`` (the query's index within its step: 0, 1, ... in the order measured), ``sample`` (the data
point) and, on a device that plays waveforms, ``t`` (seconds into the waveform); one data column
per element of each parameter, input and output, named after the device's elements (a QCoDeS
device: its parameters' full names, e.g. ``dac_ch1``, ``dmm_v``; otherwise ``controls_0``, ...,
``input_0``, ..., ``output_0``) with units, plus ``query`` (the device's running query number) and
``failed`` (1 where the answer could not be read: the output is NaN there, the setting was applied).
Columns are QCoDeS ``array`` parameters (stored as exact binary: QCoDeS's ``numeric`` columns read
floats back rounded to 15 digits, which can put a value recorded at a bound an ulp outside it). On a
static device every (setting, data point) is one row of length 1 (QCoDeS's pandas and xarray
exports both work). On a waveform device every (waveform, data point) is one row over ``t`` (fast
to write: an HGE training is ~10⁵ samples a step); open it with ``to_xarray_dataset()`` (QCoDeS's
pandas export refuses rows of different lengths, and calibration, training and read-out waveforms
differ in length).

What is recorded is what the device counted: a call the device refuses (out of range) applied
nothing and records nothing; a call that fails part-way records the settings the device applied
(its query count grew by that many) with the answers read before the failure. So the number of
recorded settings, ``recorded_settings``, equals the device's query count.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConfigError, MeasurementError

log = logging.getLogger(__name__)

COORDS = ("epoch", "step", "probe", "sample")
DATABASE = "physgrad.db"


def _qcodes_dataset():
    from ..systems.lab.qcodes import require_qcodes

    require_qcodes()
    import qcodes.dataset as qd

    return qd


def _column(name: str, taken: set[str]) -> str:
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name)) or "x"
    if safe[0].isdigit():
        safe = "_" + safe
    base, i = safe, 1
    while safe in taken:
        safe, i = f"{base}_{i}", i + 1
    taken.add(safe)
    return safe


class Recorder:
    """Record a device's settings and answers into a QCoDeS dataset (see the module docstring).

    Parameters
    ----------
    folder:
        Where the SQLite database lives (created if needed); or a path ending in ``.db``.
    experiment, sample:
        QCoDeS experiment and sample names (a config's name and the device's, typically).
    name:
        Name of the QCoDeS run (one per training).
    metadata:
        Extra key/values stored with the run (strings or numbers), e.g. the config.
    """

    def __init__(
        self,
        folder: str | Path,
        experiment: str = "physgrad",
        sample: str = "device",
        *,
        name: str = "training",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        path = Path(folder)
        self.path = path if path.suffix == ".db" else path / DATABASE
        if not experiment or not sample:
            raise ConfigError("the recorder needs non-empty experiment and sample names")
        self.experiment, self.sample, self.name = str(experiment), str(sample), str(name)
        self.metadata = dict(metadata or {})
        self.system = None
        self.epoch = 0
        self.step = 0
        self.probe = 0
        self.recorded_settings = 0
        self.recorded_rows = 0
        self.failed = 0
        self._runner = None
        self._saver = None
        self._restore: list[tuple[Any, str, Any]] = []

    @classmethod
    def for_config(cls, config: Any, folder: str | Path, system: Any = None) -> "Recorder":
        """A recorder named from a config: ``experiment`` (else its ``label``), ``sample`` (else the device's name)."""
        experiment = getattr(config, "experiment", None) or getattr(config, "label", None) or type(config).__name__
        sample = getattr(config, "sample", None) or getattr(system, "name", None) or type(system).__name__
        meta = {}
        as_dict = getattr(config, "to_dict", None) or getattr(config, "as_dict", None)
        if callable(as_dict):
            import json

            meta["config"] = json.dumps(as_dict(), default=str, sort_keys=True)
        return cls(folder, experiment, sample, metadata=meta)

    # ----------------------------------------------------------------------------- run
    @property
    def run_id(self) -> int | None:
        return None if self._saver is None else self._saver.run_id

    @property
    def captured_run_id(self) -> int | None:
        return None if self._dataset is None else self._dataset.captured_run_id

    @property
    def guid(self) -> str | None:
        return None if self._dataset is None else self._dataset.guid

    def attach(self, system) -> "Recorder":
        """Start the QCoDeS run for ``system`` and record every ``measure``/``measure_waveform`` from now on."""
        if self.system is not None:
            raise ConfigError("this recorder already records a device; one run records one device")
        qd = _qcodes_dataset()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = qd.connect(str(self.path))
        exp = qd.load_or_create_experiment(self.experiment, self.sample, conn=self._conn)
        names = getattr(system, "record_names", None) or {}
        taken = set(COORDS) | {"t", "query", "failed"}
        self._param_cols: dict[str, list[str]] = {}
        units: dict[str, str] = {}
        for pname, spec in system.parameter_specs.items():
            elems = (names.get("parameters") or {}).get(pname) or [f"{pname}_{i}" for i in range(spec.numel)]
            eunits = (names.get("parameter_units") or {}).get(pname) or [spec.unit] * spec.numel
            if len(elems) != spec.numel:
                elems = [f"{pname}_{i}" for i in range(spec.numel)]
            cols = [_column(e, taken) for e in elems]
            self._param_cols[pname] = cols
            units.update(zip(cols, eunits))
        n_in = math.prod(system.input_shape)
        n_out = math.prod(system.output_shape)
        in_names = names.get("inputs") or [f"input_{i}" for i in range(n_in)]
        out_names = names.get("outputs") or [f"output_{i}" for i in range(n_out)]
        in_names = in_names if len(in_names) == n_in else [f"input_{i}" for i in range(n_in)]
        out_names = out_names if len(out_names) == n_out else [f"output_{i}" for i in range(n_out)]
        self._in_cols = [_column(e, taken) for e in in_names]
        self._out_cols = [_column(e, taken) for e in out_names]
        units.update(zip(self._in_cols, names.get("input_units") or [""] * n_in))
        units.update(zip(self._out_cols, names.get("output_units") or [""] * n_out))
        self._waveform = callable(getattr(system, "measure_waveform", None))
        self._fs = float(getattr(system, "fs", 1.0) or 1.0)
        coords = list(COORDS) + (["t"] if self._waveform else [])
        kind = "array"  # stored as exact binary (QCoDeS's "numeric" reads floats back to 15 digits)
        meas = qd.Measurement(exp=exp, name=self.name)
        for c in coords:
            meas.register_custom_parameter(c, label=c, unit="s" if c == "t" else "", paramtype=kind)
        for col in ["query", "failed", *sum(self._param_cols.values(), []), *self._in_cols, *self._out_cols]:
            meas.register_custom_parameter(col, unit=units.get(col, "") or "", setpoints=coords, paramtype=kind)
        # one row per training step (filled by follow()): 1-D, so QCoDeS's plot_dataset draws it
        meas.register_custom_parameter("training_step", label="training step", paramtype="numeric")
        for col, unit in (("loss", ""), ("queries_total", ""), ("device_seconds_total", "s")):
            meas.register_custom_parameter(col, label=col.replace("_", " "), unit=unit, setpoints=["training_step"],
                                           paramtype="numeric")
        self._runner = meas.run(in_memory_cache=False)
        self._saver = self._runner.__enter__()
        self._dataset = self._saver.dataset
        meta = {"physgrad_device": type(system).__name__, "physgrad_identity": str(getattr(system, "identity", "")),
                **self.metadata}
        for key, value in meta.items():
            self._dataset.add_metadata(_column(key, set()), value if isinstance(value, (int, float)) else str(value))
        self.system = system
        self._patch(system, "measure", self._recording_measure(system.measure))
        if self._waveform:
            self._patch(system, "measure_waveform", self._recording_waveform(system.measure_waveform))
        return self

    def follow(self, method, steps_per_epoch: int | None = None) -> "Recorder":
        """Count ``method.backward`` calls as steps (``epoch = step // steps_per_epoch``).

        Each call also writes one row of the run's 1-D part: ``loss``, ``queries_total`` and
        ``device_seconds_total`` against ``training_step`` (what ``plot_dataset`` draws).
        """
        original = method.backward

        def backward(*args, **kwargs):
            loss = math.nan
            try:
                loss = original(*args, **kwargs)
                return loss
            finally:
                self._step_row(float(loss))
                self.position(step=self.step + 1,
                              epoch=(self.step + 1) // steps_per_epoch if steps_per_epoch else self.epoch)

        self._patch(method, "backward", backward)
        return self

    def position(self, *, epoch: int | None = None, step: int | None = None) -> None:
        """Where the training is: the coordinates of what is measured next (a new step restarts ``probe``)."""
        if epoch is not None:
            self.epoch = int(epoch)
        if step is not None and int(step) != self.step:
            self.step = int(step)
            self.probe = 0

    def close(self) -> None:
        """End the QCoDeS run (the data is in the database) and stop watching the device."""
        for obj, attr, old in reversed(self._restore):
            if old is None:
                try:
                    delattr(obj, attr)
                except AttributeError:
                    pass
            else:
                setattr(obj, attr, old)
        self._restore.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.__exit__(None, None, None)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self):
        """The recorded run as a QCoDeS ``DataSet`` (what ``load_by_run_spec`` returns)."""
        qd = _qcodes_dataset()
        if self._dataset is None:
            raise ConfigError("nothing recorded yet: attach() a device first")
        return qd.load_by_run_spec(captured_run_id=self.captured_run_id, experiment_name=self.experiment,
                                   sample_name=self.sample, conn=qd.connect(str(self.path)))

    _dataset = None

    # ----------------------------------------------------------------------------- recording
    def _patch(self, obj, attr: str, new) -> None:
        self._restore.append((obj, attr, obj.__dict__.get(attr)))
        setattr(obj, attr, new)

    def _recording_measure(self, measure):
        system = self.system

        def recorded(params, inputs):
            if getattr(system, "_waveform_mode", False):
                return measure(params, inputs)  # the inner measure_waveform records it
            before = system.queries
            try:
                out = measure(params, inputs)
            except MeasurementError as exc:
                n = system.queries - before
                if n > 0:
                    self._static(params, inputs, n, getattr(exc, "partial_answers", None), failed=True)
                raise
            self._static(params, inputs, system.queries - before, out)
            return out

        return recorded

    def _recording_waveform(self, measure_waveform):
        system = self.system

        def recorded(params, inputs):
            before = system.queries
            try:
                out = measure_waveform(params, inputs)
            except MeasurementError:
                if system.queries > before:
                    self._waveform_rows(params, inputs, None)
                raise
            if system.queries > before:
                self._waveform_rows(params, inputs, out)
            return out

        return recorded

    def _settings(self, params: Mapping[str, torch.Tensor], k: int) -> dict[str, np.ndarray]:
        """``{column: [K]}`` from ``{name: [K, *shape]}`` (or unbatched ``shape``)."""
        cols = {}
        for pname, names in self._param_cols.items():
            value = torch.as_tensor(params[pname]).detach().to(torch.float64)
            shape = self.system.parameter_specs[pname].shape
            if tuple(value.shape) == shape:
                value = value.unsqueeze(0)
            value = value.reshape(value.shape[0], -1)
            for i, col in enumerate(names):
                cols[col] = value[:k, i].numpy()
        return cols

    def _static(self, params, inputs, k: int, out, failed: bool = False) -> None:
        if k <= 0:
            return
        n_in = len(self.system.input_shape)
        x = torch.as_tensor(inputs).detach().to(torch.float64)
        if x.dim() == n_in + 1:
            x = x.unsqueeze(0).expand(k, *x.shape)
        b = x.shape[1]
        x = x[:k].reshape(k, b, -1)
        y = torch.full((k, b, len(self._out_cols)), math.nan, dtype=torch.float64)
        if out is not None:
            o = torch.as_tensor(out).detach().to(torch.float64).reshape(-1, b, len(self._out_cols))[:k]
            y[: o.shape[0]] = o
        bad = torch.isnan(y).any(-1)
        if failed and not bad.any():
            bad[-1, -1] = True
        settings = self._settings(params, k)
        rows = {
            "epoch": np.full(k * b, self.epoch, dtype=np.float64),
            "step": np.full(k * b, self.step, dtype=np.float64),
            "probe": np.repeat(np.arange(self.probe, self.probe + k, dtype=np.float64), b),
            "sample": np.tile(np.arange(b, dtype=np.float64), k),
            "query": np.repeat(np.arange(self.system.queries - k, self.system.queries, dtype=np.float64), b),
            "failed": bad.reshape(-1).to(torch.float64).numpy(),
        }
        if self._waveform:
            rows["t"] = np.zeros(k * b)
        for col, v in settings.items():
            rows[col] = np.repeat(v, b)
        for i, col in enumerate(self._in_cols):
            rows[col] = x[..., i].reshape(-1).numpy()
        for i, col in enumerate(self._out_cols):
            rows[col] = y[..., i].reshape(-1).numpy()
        self._write(rows, k, int(bad.reshape(k, b).any(-1).sum()) if failed else 0, per_row=1)

    def _waveform_rows(self, params, inputs, out) -> None:
        first = next(iter(params.values()))
        n = torch.as_tensor(first).shape[0]
        n_in = len(self.system.input_shape)
        x = torch.as_tensor(inputs).detach().to(torch.float64)
        if x.dim() == n_in + 1:
            x = x.unsqueeze(0).expand(n, *x.shape)
        b = x.shape[1]
        x = x.reshape(n, b, -1)
        y = torch.full((n, b, len(self._out_cols)), math.nan, dtype=torch.float64)
        if out is not None:
            y = torch.as_tensor(out).detach().to(torch.float64).reshape(n, b, -1)
        settings = self._settings(params, n)  # [N] per element (the waveform)
        rows = {
            "epoch": np.full(n * b, self.epoch, dtype=np.float64),
            "step": np.full(n * b, self.step, dtype=np.float64),
            "probe": np.full(n * b, self.probe, dtype=np.float64),
            "sample": np.repeat(np.arange(b, dtype=np.float64), n),
            "t": np.tile(np.arange(n, dtype=np.float64) / self._fs, b),
            "query": np.full(n * b, self.system.queries - 1, dtype=np.float64),
            "failed": np.full(n * b, 0.0 if out is not None else 1.0),
        }
        for col, v in settings.items():
            rows[col] = np.tile(v, b)
        for i, col in enumerate(self._in_cols):
            rows[col] = x[..., i].T.reshape(-1).numpy()
        for i, col in enumerate(self._out_cols):
            rows[col] = y[..., i].T.reshape(-1).numpy()
        self._write(rows, 1, 0 if out is not None else 1)

    def _step_row(self, loss: float) -> None:
        if self._saver is None:
            return
        system = self.system
        self._saver.add_result(
            ("training_step", self.step), ("loss", loss), ("queries_total", system.queries),
            ("device_seconds_total", float(system.device_seconds)),
        )

    def _write(self, rows: dict[str, np.ndarray], settings: int, failed: int, per_row: int | None = None) -> None:
        if per_row is None:
            self._saver.add_result(*rows.items())
        else:  # rows of equal length, so QCoDeS's pandas export takes them too
            for start in range(0, len(rows["step"]), per_row):
                self._saver.add_result(*((k, v[start : start + per_row]) for k, v in rows.items()))
        self.probe += settings
        self.recorded_settings += settings
        self.recorded_rows += len(rows["step"])
        self.failed += failed
