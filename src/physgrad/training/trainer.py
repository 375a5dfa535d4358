"""The training loop: epochs × batches with any method and any ``torch.optim`` optimizer.

Each step is ``method.backward(model, loss_fn, x, y)`` → ``optimizer.step()`` (or, for a method
that owns its update — ``owns_update``, the black-box baselines — ``method.step(model, loss_fn, x, y)``) → device parameters
clamped into their safe ranges. A step whose estimate is non-finite, or whose measurement failed,
is skipped (nothing applied) and counted; too many in a row stop the run with the last error.

With ``out_dir`` the run writes ``metrics.jsonl`` (a record every ``log_every`` steps and one per
epoch; the last line is the last epoch's, with ``test_accuracy`` and ``queries``) and
``checkpoint.pt`` (every ``checkpoint_every`` steps and at each epoch end). ``fit`` resumes from
an existing checkpoint: model, optimizer, scheduler, method and device random states, the data
order and the metrics file are restored, so the continued run is bit-identical to one that was
never interrupted.

Runs cannot be mislabelled or lost (issue 12):

* with ``config`` (the run's settings as a dict) the checkpoint stores the config and its hash; a
  resume under a different config (``epochs``, ``log_every``, ``checkpoint_every`` and
  ``data_root`` aside) is refused with the keys that differ and how to start afresh
  (``--no-resume``) or continue deliberately (the stored config); ``config.json`` is written only
  after that check. Asking for fewer epochs than a run already trained is refused too.
* checkpoints carry a SHA-256 digest (:mod:`.checkpoint`); restored counters are validated
  against the data (step and epoch consistent, ``metrics_offset`` inside the metrics file, the
  data order a permutation) before anything is truncated; orphan temporary files are removed.
* SIGINT/SIGTERM: the step in progress finishes, a checkpoint is written and the command that
  resumes is printed (:class:`RunInterrupted`).
* device work re-done after a resume is counted: every step leaves the cumulative device cost in
  ``device_work.json``; on resume the work done after the checkpoint is added to
  ``redone_queries`` / ``redone_device_seconds`` in the metrics.
* hangs: each device step and evaluation runs under a watchdog (``watchdog_s``, default 300 s):
  a call that does not return stops the run (:class:`DeviceHangError`, resume from the last
  checkpoint). Failing steps are skipped, but after ``give_up_s`` (default 600 s) of nothing but
  failures the run stops. Worst case before the run gives up: ``give_up_s`` plus one step's own
  limit (``watchdog_s``), i.e. 15 minutes at the defaults.

(Length: the loop and everything that guards it — checkpoints, config checks, signals, the
watchdog, the work ledger — share the trainer's state, so they stay in one module for now; a later
split would move the guards into a ``training/safety.py`` mixin.)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..errors import CheckpointError, ConfigError, MeasurementError, NonFiniteGradientError, PhysgradError
from ..methods.base import GradientMethod
from ..models.physical_layer import clamp_to_safe_range_, systems_of
from .checkpoint import FRESH, fsync_dir, load_checkpoint, remove_orphans, save_checkpoint
from .metrics import MetricsLog

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LEDGER = "device_work.json"
CONFIG = "config.json"
RESUME_NEUTRAL = ("epochs", "log_every", "checkpoint_every", "data_root")  # may change between a run and its resume
WATCHDOG_S = 300.0
GIVE_UP_S = 600.0


class RunInterrupted(PhysgradError, RuntimeError):
    """SIGINT/SIGTERM: the step finished, a checkpoint was written; the message says how to resume."""


class DeviceHangError(MeasurementError):
    """A device step or evaluation did not return within the watchdog's limit; the run stopped."""


class DeviceGaveUpError(MeasurementError):
    """Every step failed for longer than ``give_up_s``; the run stopped."""


def config_hash(config: Mapping) -> str:
    """SHA-256 of the settings that determine a run's results (``RESUME_NEUTRAL`` keys left out)."""
    kept = {k: config[k] for k in sorted(config) if k not in RESUME_NEUTRAL}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def resume_command() -> str:
    """The command line of this process without ``--no-resume``: what continues the run."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "physgrad"
    if program in ("cli.py", "__main__.py", "-c", ""):  # python -m physgrad.cli ...: the console script's name
        program = "physgrad"
    argv = [program, *[a for a in sys.argv[1:] if a != "--no-resume"]]
    return " ".join(shlex.quote(a) for a in argv)


class Trainer:
    """Fit ``model`` with ``method`` and ``optimizer`` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        method: GradientMethod,
        optimizer: torch.optim.Optimizer,
        *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        batch_size: int = 64,
        seed: int = 0,
        out_dir: str | Path | None = None,
        scheduler=None,
        progress: bool | None = None,
        log_every: int = 0,
        checkpoint_every: int = 0,
        eval_batch_size: int = 2048,
        eval_train_samples: int = 2048,
        max_consecutive_skips: int = 10,
        config: Mapping | None = None,
        watchdog_s: float | None = WATCHDOG_S,
        give_up_s: float = GIVE_UP_S,
        handle_signals: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if watchdog_s is not None and not 0 < watchdog_s < math.inf:
            raise ValueError(f"watchdog_s must be > 0 seconds or None, got {watchdog_s}")
        if not 0 < give_up_s < math.inf:
            raise ValueError(f"give_up_s must be > 0 seconds, got {give_up_s}")
        self.config = None if config is None else dict(config)
        self.watchdog_s = watchdog_s
        self.give_up_s = float(give_up_s)
        self.handle_signals = handle_signals
        self.redone = {"queries": 0, "samples": 0, "device_seconds": 0.0}
        self._signal: str | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._failing_since: float | None = None
        self.model = model
        self.method = method
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.eval_batch_size = eval_batch_size
        self.eval_train_samples = eval_train_samples
        self.max_consecutive_skips = max_consecutive_skips
        self.metrics = MetricsLog(None if self.out_dir is None else self.out_dir / METRICS)
        self.step = 0
        self.epoch = 0
        self.skipped = 0
        self._consecutive_skips = 0
        self.wall_time = 0.0
        self._epoch_losses: list[float] = []  # losses of the epoch in progress (checkpointed)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Mean loss and accuracy of the model (measured on the device, as deployed)."""
        was_training = self.model.training
        self.model.eval()
        total_loss, correct = 0.0, 0
        try:
            for start in range(0, len(y), self.eval_batch_size):
                xb, yb = x[start : start + self.eval_batch_size], y[start : start + self.eval_batch_size]
                out = self._measure_outputs(xb)
                total_loss += float(self.loss_fn(out, yb)) * len(yb)
                correct += int((out.argmax(-1) == yb).sum())
        finally:
            self.model.train(was_training)
        return total_loss / max(len(y), 1), correct / max(len(y), 1)

    def _measure_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs, measuring again (up to ``max_consecutive_skips`` times) if a measurement fails."""
        for attempt in range(self.max_consecutive_skips + 1):
            try:
                return self._watched(self.model, x)
            except MeasurementError as e:
                if attempt == self.max_consecutive_skips:
                    raise
                log.warning("evaluation measurement failed, measuring again: %s", e)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ training
    def fit(self, data: Dataset, epochs: int, *, resume: bool = True) -> list[dict]:
        """Train for ``epochs`` epochs (in total, counting any resumed ones); return epoch records."""
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
        order = None
        n = len(data.y_train)
        steps_per_epoch = math.ceil(n / self.batch_size)
        if self.out_dir is not None:
            remove_orphans(self.out_dir / CHECKPOINT)
        if resume and self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            state = load_checkpoint(self.out_dir / CHECKPOINT)
            self._check_config(state)
            order = self._restore(state, n, steps_per_epoch)
            if self.epoch > epochs:
                raise ConfigError(
                    f"the run in {self.out_dir} has already trained {self.epoch} epochs, more than the {epochs} asked; "
                    f"nothing was trained. Ask for --epochs {self.epoch} or more to continue it, or {FRESH}"
                )
            if self.epoch == epochs:
                log.warning("the run in %s is already complete (%d epochs): its result is reported, nothing was trained",
                            self.out_dir, epochs)
            log.info("resumed from %s at epoch %d step %d", self.out_dir / CHECKPOINT, self.epoch, self.step)
        elif self.out_dir is not None:
            self.metrics.truncate(0)
            (self.out_dir / LEDGER).unlink(missing_ok=True)
        if self.out_dir is not None and self.config is not None:
            _write_json(self.out_dir / CONFIG, self.config)
        previous = self._install_signals()
        try:
            self._loop(data, epochs, order, n, steps_per_epoch)
        except BaseException:
            if self.out_dir is not None and self.metrics.path.exists() and self.metrics.path.stat().st_size == 0:
                self.metrics.path.unlink()  # a failed run leaves no empty metrics file
            raise
        finally:
            self._restore_signals(previous)
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None
        return [r for r in self.metrics.records if r.get("kind") == "epoch"]

    def _loop(self, data: Dataset, epochs: int, order, n: int, steps_per_epoch: int) -> None:
        while self.epoch < epochs:
            if order is None:
                order = torch.randperm(n, generator=self.generator)
            first = self.step - self.epoch * steps_per_epoch
            losses: list[float] = self._epoch_losses if first else []  # a resumed epoch keeps its losses
            self._epoch_losses = losses
            bar = tqdm(range(first, steps_per_epoch), disable=not self.progress, desc=f"epoch {self.epoch + 1}/{epochs}", leave=False)
            for i in bar:
                started = time.perf_counter()
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                loss = self._train_step(data.x_train[idx], data.y_train[idx])
                self.step += 1
                self.wall_time += time.perf_counter() - started
                self._write_ledger()
                if loss is not None:
                    losses.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if getattr(self.scheduler, "per_step", False):  # e.g. LossBackoff: fed every step's loss
                        self.scheduler.step(loss)
                if self.log_every and self.step % self.log_every == 0:
                    self.metrics.write({"kind": "step", "epoch": self.epoch, "step": self.step, "loss": loss, **self._cost()})
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                    self._save(order)
                if self._signal is not None:
                    self._interrupted(order)
            self.epoch += 1
            order = None
            if self.scheduler is not None and not getattr(self.scheduler, "per_step", False):
                self.scheduler.step()
            self.metrics.write(self._epoch_record(data, losses))
            self._save(None)
            if self._signal is not None:
                self._interrupted(None)

    # ------------------------------------------------------------------ signals, watchdog, ledger
    def _install_signals(self):
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return None
        previous = {}

        def handler(signum, frame):  # noqa: ARG001
            if self._signal is not None:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self._signal = signal.Signals(signum).name
            print(f"\n{self._signal}: finishing the current step, then saving a checkpoint (again to stop at once)",
                  file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _restore_signals(self, previous) -> None:
        for sig, old in (previous or {}).items():
            signal.signal(sig, old)

    def _interrupted(self, order) -> None:
        what = self._signal
        self._signal = None
        if self.out_dir is None:
            raise RunInterrupted(f"interrupted by {what} after step {self.step}; no out_dir, so nothing was saved")
        self._save(order)
        raise RunInterrupted(f"interrupted by {what} after step {self.step} (epoch {self.epoch}); checkpoint saved in "
                             f"{self.out_dir / CHECKPOINT}. Resume with: {resume_command()}")

    def _watched(self, fn, *args):
        """``fn(*args)`` under the watchdog: :class:`DeviceHangError` if it does not return within ``watchdog_s``."""
        if self.watchdog_s is None:
            return fn(*args)
        if self._worker is None:
            threads = torch.get_num_threads()
            self._worker = concurrent.futures.ThreadPoolExecutor(1, "physgrad-device-call",
                                                                 initializer=torch.set_num_threads, initargs=(threads,))
        grad = torch.is_grad_enabled()  # grad mode is per thread: carry the caller's (evaluate runs under no_grad)

        def call():
            with torch.set_grad_enabled(grad):
                return fn(*args)

        future = self._worker.submit(call)
        try:
            return future.result(timeout=self.watchdog_s)
        except concurrent.futures.TimeoutError:
            self._worker.shutdown(wait=False)
            self._worker = None  # the hung call keeps its thread; nothing else is sent through it
            raise DeviceHangError(
                f"a device call did not return within watchdog_s={self.watchdog_s:g} s; the run stopped (the last "
                f"checkpoint is kept: resume with {resume_command()} once the device answers)"
            ) from None

    def _write_ledger(self) -> None:
        """The device's cumulative work, re-done work included (what a resume compares with its checkpoint)."""
        if self.out_dir is None:
            return
        c = self.method.total_cost
        ledger = {"queries": c.queries + self.redone["queries"], "samples": c.samples + self.redone["samples"],
                  "device_seconds": c.device_seconds + self.redone["device_seconds"]}
        _write_json(self.out_dir / LEDGER, ledger, durable=False)

    def _count_redone(self) -> None:
        path = self.out_dir / LEDGER
        try:
            ledger = json.loads(path.read_text(encoding="utf-8"))
            done = {k: float(ledger[k]) for k in ("queries", "samples", "device_seconds")}
        except (OSError, ValueError, KeyError, TypeError):
            return
        c = self.method.total_cost
        restored = {"queries": c.queries + self.redone["queries"], "samples": c.samples + self.redone["samples"],
                    "device_seconds": c.device_seconds + self.redone["device_seconds"]}
        extra = {k: max(0.0, done[k] - restored[k]) for k in restored}
        if extra["queries"] > 0:
            log.warning("%d device queries done after the checkpoint will be done again; they are counted as redone_queries",
                        int(extra["queries"]))
        self.redone["queries"] += int(extra["queries"])
        self.redone["samples"] += int(extra["samples"])
        self.redone["device_seconds"] += extra["device_seconds"]

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        owns_update = getattr(self.method, "owns_update", False)  # a search baseline: its library moves θ
        try:
            loss = self._watched(self.method.step if owns_update else self.method.backward, self.model, self.loss_fn, x, y)
        except DeviceHangError:
            raise
        except (NonFiniteGradientError, MeasurementError) as e:
            self.skipped += 1
            self._consecutive_skips += 1
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            log.warning("step %d skipped (%s): %s", self.step, type(e).__name__, e)
            if self._consecutive_skips > self.max_consecutive_skips:
                raise
            if now - self._failing_since > self.give_up_s:
                raise DeviceGaveUpError(f"every step failed for {now - self._failing_since:.0f} s (give_up_s={self.give_up_s:g}); "
                                        f"the run stopped. Last error: {e}. Resume with: {resume_command()}") from e
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self._consecutive_skips = 0
        self._failing_since = None
        if not owns_update:
            self.optimizer.step()
        clamp_to_safe_range_(self.model)
        return float(loss)

    def _cost(self) -> dict:
        c = self.method.total_cost
        return {"queries": c.queries, "samples": c.samples, "device_seconds": c.device_seconds}

    def _epoch_record(self, data: Dataset, losses: list[float]) -> dict:
        ntr = min(self.eval_train_samples, len(data.y_train))
        _, train_acc = self.evaluate(data.x_train[:ntr], data.y_train[:ntr])
        test_loss, test_acc = self.evaluate(data.x_test, data.y_test)
        return {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "method": getattr(self.method, "name", type(self.method).__name__),
            "scope": getattr(self.method, "scope", None),
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "train_accuracy": train_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "skipped_steps": self.skipped,
            "wall_time": self.wall_time,
            **self._cost(),
            "redone_queries": self.redone["queries"],
            "redone_device_seconds": self.redone["device_seconds"],
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, order: torch.Tensor | None) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "systems": [s.state_dict() for s in systems_of(self.model)],
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "order": order,
            "step": self.step,
            "epoch": self.epoch,
            "skipped": self.skipped,
            "wall_time": self.wall_time,
            "metrics_offset": self.metrics.offset,
            "epoch_losses": list(self._epoch_losses),
            "consecutive_skips": self._consecutive_skips,
            "redone": dict(self.redone),
            "config": None if self.config is None else json.dumps(self.config, sort_keys=True, default=str),
            "config_hash": None if self.config is None else config_hash(self.config),
        }

    def _save(self, order: torch.Tensor | None) -> None:
        if self.out_dir is not None:
            save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict(order))

    def _check_config(self, state: dict) -> None:
        """Refuse to continue a checkpoint under a different config (see the module docstring)."""
        if self.config is None or state.get("config_hash") in (None, config_hash(self.config)):
            return
        try:
            stored = json.loads(state.get("config") or "{}")
        except ValueError:
            stored = {}
        diff = [f"{k}: {stored.get(k)!r} -> {self.config.get(k)!r}" for k in sorted(set(stored) | set(self.config))
                if k not in RESUME_NEUTRAL and stored.get(k) != self.config.get(k)]
        raise CheckpointError(
            f"the checkpoint in {self.out_dir} belongs to a different config ({'; '.join(diff) or 'hash differs'}); "
            f"nothing was trained or relabelled. To {FRESH}; to continue that run deliberately, use its own settings "
            f"(physgrad run {self.out_dir / CONFIG} --out ...)"
        )

    def _restore(self, state: dict, n: int, steps_per_epoch: int) -> torch.Tensor | None:
        self._validate(state, n, steps_per_epoch)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.method.load_state_dict(state["method"])
            systems = systems_of(self.model)
            if len(systems) != len(state["systems"]):
                raise CheckpointError("checkpoint has a different number of devices than the model")
            for s, st in zip(systems, state["systems"]):
                s.load_state_dict(st)
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self.skipped, self.wall_time = int(state["skipped"]), float(state["wall_time"])
            self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
            self._consecutive_skips = int(state.get("consecutive_skips", 0))
            redone = state.get("redone") or {}
            self.redone = {"queries": int(redone.get("queries", 0)), "samples": int(redone.get("samples", 0)),
                           "device_seconds": float(redone.get("device_seconds", 0.0))}
            self.metrics.truncate(int(state["metrics_offset"]))
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint does not match this run ({type(e).__name__}: {e}); {FRESH}") from e
        if self.out_dir is not None:
            self._count_redone()
        return state["order"]

    def _validate(self, state: dict, n: int, steps_per_epoch: int) -> None:
        """Refuse counters that this run's data could not have produced (before anything is changed)."""
        def integer(key, low, high):
            v = state.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise CheckpointError(f"checkpoint field {key!r} = {v!r} is impossible for this run "
                                      f"(expected an integer in [{low}, {high}]); {FRESH}")
            return v

        epoch = integer("epoch", 0, 10**7)
        order = state.get("order")
        top = (epoch + 1) * steps_per_epoch if order is not None else epoch * steps_per_epoch
        step = integer("step", epoch * steps_per_epoch, top)
        if order is None and step != epoch * steps_per_epoch:
            raise CheckpointError(f"checkpoint step {step} does not fit epoch {epoch}; {FRESH}")
        integer("skipped", 0, step)
        integer("consecutive_skips", 0, step)
        size = self.metrics.path.stat().st_size if self.metrics.path is not None and self.metrics.path.exists() else 0
        integer("metrics_offset", 0, size)
        wall = state.get("wall_time")
        if not isinstance(wall, (int, float)) or not 0 <= wall < math.inf:
            raise CheckpointError(f"checkpoint field 'wall_time' = {wall!r} is impossible; {FRESH}")
        if order is not None:
            if not isinstance(order, torch.Tensor) or order.shape != (n,) or order.dtype != torch.int64 \
                    or not torch.equal(order.sort().values, torch.arange(n)):
                raise CheckpointError(f"checkpoint's data order is not a permutation of this run's {n} samples; {FRESH}")
        losses = state.get("epoch_losses", [])
        if not isinstance(losses, list) or len(losses) > steps_per_epoch:
            raise CheckpointError(f"checkpoint field 'epoch_losses' is impossible for this run; {FRESH}")


def _write_json(path: Path, obj, durable: bool = True) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename; fsync'ed unless ``durable=False``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=None if not durable else 2, sort_keys=True, default=str)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
