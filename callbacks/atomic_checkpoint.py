"""Checkpoint I/O that never leaves a half-written file behind."""
from __future__ import annotations

import os
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lrface.io import atomic_write, atomic_write_text  # noqa: F401  (atomic_write_text re-exported)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`lrface.io.atomic_write` (temporary file beside ``path``, fsync, rename).

    Lightning's own ``_atomic_save`` stages through fsspec, whose local transaction writes into the system temp
    directory and moves the file afterwards: across filesystems that move is a copy, and a SIGKILL in the middle of it
    leaves a truncated ``last.ckpt`` that the next resume chokes on. A rename inside one directory is atomic.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Trainer plugin: every checkpoint (``last.ckpt``, best-k) is written with :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)
