"""The training loop: epochs × batches with any method and any ``torch.optim`` optimizer.

Each step is ``method.backward(model, loss_fn, x, y)`` → ``optimizer.step()`` → device parameters
clamped into their safe ranges. A step whose estimate is non-finite, or whose measurement failed,
is skipped (nothing applied) and counted; too many in a row stop the run with the last error.

With ``out_dir`` the run writes ``metrics.jsonl`` (a record every ``log_every`` steps and one per
epoch; the last line is the last epoch's, with ``test_accuracy`` and ``queries``) and
``checkpoint.pt`` (every ``checkpoint_every`` steps and at each epoch end). ``fit`` resumes from
an existing checkpoint: model, optimizer, scheduler, method and device random states, the data
order and the metrics file are restored, so the continued run is bit-identical to one that was
never interrupted.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..errors import CheckpointError, MeasurementError, NonFiniteGradientError
from ..methods.base import GradientMethod
from ..models.physical_layer import clamp_to_safe_range_, systems_of
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import MetricsLog

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
                return self.model(x)
            except MeasurementError as e:
                if attempt == self.max_consecutive_skips:
                    raise
                log.warning("evaluation measurement failed, measuring again: %s", e)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ training
    def fit(self, data: Dataset, epochs: int, *, resume: bool = True) -> list[dict]:
        """Train for ``epochs`` epochs (in total, counting any resumed ones); return epoch records."""
        order = None
        if resume and self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            order = self._restore(load_checkpoint(self.out_dir / CHECKPOINT))
            log.info("resumed from %s at epoch %d step %d", self.out_dir / CHECKPOINT, self.epoch, self.step)
        elif self.out_dir is not None:
            self.metrics.truncate(0)
        n = len(data.y_train)
        steps_per_epoch = math.ceil(n / self.batch_size)
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
                if loss is not None:
                    losses.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.log_every and self.step % self.log_every == 0:
                    self.metrics.write({"kind": "step", "epoch": self.epoch, "step": self.step, "loss": loss, **self._cost()})
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                    self._save(order)
            self.epoch += 1
            order = None
            if self.scheduler is not None:
                self.scheduler.step()
            self.metrics.write(self._epoch_record(data, losses))
            self._save(None)
        return [r for r in self.metrics.records if r.get("kind") == "epoch"]

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self.method.backward(self.model, self.loss_fn, x, y)
        except (NonFiniteGradientError, MeasurementError) as e:
            self.skipped += 1
            self._consecutive_skips += 1
            log.warning("step %d skipped (%s): %s", self.step, type(e).__name__, e)
            if self._consecutive_skips > self.max_consecutive_skips:
                raise
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self._consecutive_skips = 0
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
        }

    def _save(self, order: torch.Tensor | None) -> None:
        if self.out_dir is not None:
            save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict(order))

    def _restore(self, state: dict) -> torch.Tensor | None:
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
            self.metrics.truncate(int(state["metrics_offset"]))
        except (KeyError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint does not match this run ({type(e).__name__}: {e})") from e
        return state["order"]
