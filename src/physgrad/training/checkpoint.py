"""Atomic, verified checkpoints that resume a run exactly.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, renamed over
the old one (``os.replace`` is atomic on POSIX) and the folder is fsync'ed, so a crash at any
moment leaves either the previous or the new checkpoint, never a torn one, and the rename itself
survives a power cut. Temporary files that a killed writer left behind are removed
(:func:`remove_orphans`).

The file is torch's serialisation of the state followed by a 40-byte trailer: ``b"PGCK"``, a
SHA-256 digest of everything before it, and ``b"PGCE"``. :func:`load_checkpoint` checks the
digest before it deserialises anything, so a flipped bit anywhere is refused, never loaded
silently. It is then read with ``torch.load(weights_only=True)``: only tensors and plain
containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = 2
HEAD, TAIL = b"PGCK", b"PGCE"
TRAILER = len(HEAD) + 32 + len(TAIL)
FRESH = "start afresh with --no-resume (or choose another --out)"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically, with its digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    body = buffer.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body + HEAD + hashlib.sha256(body).digest() + TAIL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer of ``path`` left behind; returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    if len(raw) < TRAILER or raw[-len(TAIL):] != TAIL or raw[-TRAILER : -TRAILER + len(HEAD)] != HEAD:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated, or not a physgrad checkpoint (no physgrad digest at its end); {FRESH}")
    body, digest = raw[:-TRAILER], raw[-TRAILER + len(HEAD) : -len(TAIL)]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (its SHA-256 digest does not match: the file was changed "
                              f"or damaged after it was written); {FRESH}")
    try:
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types; never pass on its advice to unpickle
        raise CheckpointError(f"checkpoint {path} is corrupt or not a physgrad checkpoint ({type(e).__name__}); {FRESH}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a physgrad checkpoint of format {FORMAT}; {FRESH}")
    return state
