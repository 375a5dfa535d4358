"""Metrics as JSON lines: one record per step or epoch, appended and flushed as they happen.

The file's byte length is stored in every checkpoint; resuming truncates the file back to it, so
a resumed run's metrics equal an uninterrupted run's (wall time aside).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import ConfigError


class MetricsLog:
    """Append-only JSON-lines writer (``path=None``: keep records in memory only)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[dict] = []
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                probe = self.path.parent / f".write-test.{os.getpid()}"
                probe.touch()
                probe.unlink()
            except OSError as e:
                raise ConfigError(f"cannot write to the run folder {self.path.parent}: {e.strerror or e}") from None

    @property
    def offset(self) -> int:
        """Bytes written so far (what a checkpoint remembers)."""
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Drop everything after ``offset`` bytes (records written after the checkpoint)."""
        if self.path is None:
            return
        if offset <= 0:  # nothing kept: no file (a run that fails before its first record leaves none)
            self.path.unlink(missing_ok=True)
            self.records = []
            return
        if not self.path.exists() or offset > self.path.stat().st_size:
            raise ValueError(f"metrics offset {offset} lies beyond the end of {self.path}")
        with open(self.path, "r+b") as f:
            f.truncate(offset)
        self.records = read_metrics(self.path)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(clean)
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics file (a torn last line, from a crash mid-write, is ignored)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
