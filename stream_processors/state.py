"""Engine state kept in Faust tables: a per-batch write buffer with explicit changelog partitions.

Two problems with handing a Faust table straight to the engines:

* **Order of effects.** The engines write state at the end of a call; the worker must first
  deliver that call's outputs and only then let the state (and the acks) move on, or a crash
  in between loses outputs for good. :class:`PartitionedTableStore` buffers the writes of one
  call and applies them in :meth:`~PartitionedTableStore.commit`, after the outputs are flushed.
* **Which changelog partition.** A Faust table picks the changelog partition of a write from
  the *current event*, which does not exist in batch code (``take_events``) or in a timer
  ("Cannot modify table key from outside of stream iteration"). ``use_partitioner=True`` would
  send the key wherever the Faust producer's partitioner puts it, which need not be the
  partition of the source topic that holds the key's events, and after a rebalance the key
  would then be recovered by the wrong worker. :class:`PartitionedTable` instead writes each key
  to the partition of the source messages it came from, remembered inside the stored value
  (``[partition, state]``), so timers can write it too, and reads hide keys of partitions this
  worker does not own (left in memory by a rebalance).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import faust

log = logging.getLogger(__name__)

_DELETED = object()


class StatePartitionError(RuntimeError):
    """A state write whose changelog partition is unknown (the key came from no source message)."""


class PartitionedTable(faust.Table):
    """A Faust table whose writes name their changelog partition (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_partitions: dict[Any, int] = {}

    def partition_for_key(self, key: Any) -> int | None:
        try:
            return self.write_partitions[key]
        except KeyError:
            raise StatePartitionError(
                f"table {self.name}: no changelog partition given for key {key!r}; "
                "write through PartitionedTableStore"
            ) from None


class PartitionedTableStore:
    """The engines' :class:`~stream_processors.api.StateStore` over a :class:`PartitionedTable`.

    Values in the table are ``[partition, state]``. Reads see the pending writes of the current
    call on top of the table, restricted to :attr:`owned` partitions. Writes stay pending until
    :meth:`commit` (or are dropped by :meth:`discard`).
    """

    def __init__(self, table: PartitionedTable, num_partitions: int) -> None:
        self.table = table
        self.num_partitions = num_partitions
        self.owned: frozenset[int] = frozenset()
        self._pending: dict[str, Any] = {}
        self._routes: dict[str, int] = {}

    # -- routing ----------------------------------------------------------------------------
    def route(self, partition_by_key: Mapping[str, int]) -> None:
        """Declare the source partition of the keys the next call may create."""
        self._routes.update(partition_by_key)

    def _partition_for_write(self, key: str) -> int:
        stored = self.table.data.get(key)
        if stored is not None:
            return int(stored[0])
        if key in self._routes:
            return self._routes[key]
        # A key no source message named: fall back to librdkafka's default partitioner
        # (CRC32 of the key), which is how the agency producers of this repo spread keys.
        partition = zlib.crc32(key.encode()) % self.num_partitions
        log.warning(
            "state key without a source partition; using crc32",
            extra={"table": self.table.name, "partition": partition},
        )
        return partition

    # -- StateStore ---------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        pending = self._pending.get(key, default)
        if key in self._pending:
            return default if pending is _DELETED else pending
        stored = self.table.data.get(key)
        if stored is None or stored[0] not in self.owned:
            return default
        return stored[1]

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        self._pending[key] = _DELETED

    def __contains__(self, key: object) -> bool:
        if key in self._pending:
            return self._pending[key] is not _DELETED  # type: ignore[index]
        stored = self.table.data.get(key)
        return stored is not None and stored[0] in self.owned

    def items(self) -> Iterator[tuple[str, Any]]:
        owned = self.owned
        pending = self._pending
        for key, stored in list(self.table.data.items()):
            if key not in pending and stored is not None and stored[0] in owned:
                yield key, stored[1]
        for key, value in list(pending.items()):
            if value is not _DELETED:
                yield key, value

    def keys(self) -> Iterator[str]:
        return (key for key, _ in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    # -- the two-phase end of a call ---------------------------------------------------------
    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    def commit(self) -> int:
        """Apply the pending writes to the table (one changelog record per key); returns how many."""
        table = self.table
        n = 0
        try:
            for key, value in self._pending.items():
                partition = self._partition_for_write(key)
                table.write_partitions[key] = partition
                try:
                    if value is _DELETED:
                        if key in table.data:
                            del table[key]
                    else:
                        table[key] = [partition, value]
                finally:
                    del table.write_partitions[key]
                n += 1
        finally:
            self._pending.clear()
            self._routes.clear()
        return n

    def discard(self) -> None:
        """Drop the pending writes (the call's outputs were not delivered)."""
        self._pending.clear()
        self._routes.clear()
