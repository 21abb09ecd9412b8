"""Bad-input errors and the `data.on_corrupt: error | skip` policy shared by every loader.

Every loader reports a malformed input with :class:`DataFormatError`, whose message names the file and the
line / record / offset and what was expected. With ``on_corrupt="skip"`` a dataset returns ``None`` for that item
instead; :func:`skip_collate` drops the ``None`` items from the batch and :class:`CorruptLog` counts and logs every
one, so nothing is lost silently.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

from torch.utils.data import default_collate

log = logging.getLogger("lrface.data")

ON_CORRUPT = ("error", "skip")


class DataFormatError(ValueError):
    """A dataset file does not hold what its format promises.

    Args:
        path: the offending file.
        problem: what is wrong (``"truncated JPEG"``, ``"unknown race 'Martian'"``).
        line: 1-based line number in a text file.
        record: record key / index in a container (RecordIO key, pickle element, .mat cell).
        offset: byte offset in a binary file.
        expected: what the format requires there.
    """

    def __init__(self, path: Any, problem: str, *, line: int | None = None, record: Any = None,
                 offset: int | None = None, expected: str | None = None):
        self.path, self.problem, self.line, self.record, self.offset, self.expected = (
            str(path), problem, line, record, offset, expected)
        where = self.path
        if line is not None:
            where += f":{line}"
        if record is not None:
            where += f" record {record}"
        if offset is not None:
            where += f" at byte offset {offset}"
        msg = f"{where}: {problem}"
        if expected:
            msg += f" (expected {expected})"
        super().__init__(msg)


def check_on_corrupt(policy: str) -> str:
    if policy not in ON_CORRUPT:
        raise ValueError(f"data.on_corrupt must be one of {ON_CORRUPT}, got {policy!r}")
    return policy


class CorruptLog:
    """Counts and logs skipped items (one per process; DataLoader workers each keep their own count)."""

    def __init__(self, name: str):
        self.name = name
        self.counts: Counter[str] = Counter()

    def skip(self, err: DataFormatError) -> None:
        self.counts[err.problem] += 1
        log.warning("%s: skipped item #%d: %s", self.name, self.total, err)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def handle_corrupt(policy: str, err: DataFormatError, corrupt_log: CorruptLog) -> None:
    """Raise ``err`` under ``on_corrupt="error"``; count and log it under ``"skip"`` (the caller returns None)."""
    if policy == "error":
        raise err
    corrupt_log.skip(err)


def skip_collate(batch: Sequence[Any]) -> Any:
    """`default_collate` after dropping the items a dataset skipped (returned as ``None``)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return default_collate(kept)
