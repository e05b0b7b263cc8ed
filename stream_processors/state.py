"""Engine state kept in Faust tables, written through the worker's own output producer.

Three problems with handing a Faust table straight to the engines:

* **Order of effects.** The engines write state at the end of a call; the worker must first
  deliver that call's outputs and only then let the state (and the acks) move on, or a crash
  in between loses outputs for good. :class:`PartitionedTableStore` buffers the writes of one
  call; the worker produces them with the outputs, flushes, then :meth:`apply`\\ s them.
* **Which changelog partition.** A Faust table picks the changelog partition of a write from
  the *current event*, which does not exist in batch code (``take_events``) or in a timer
  ("Cannot modify table key from outside of stream iteration"). ``use_partitioner=True`` would
  send the key wherever the producer's partitioner puts it, which need not be the partition of
  the source topic that holds the key's events; after a rebalance the key would be recovered
  by the wrong worker. Here each key goes to the partition of the source messages it came
  from, remembered inside the stored value (``[partition, state]``), so timers can write it
  too, and reads hide keys of partitions this worker no longer owns.
* **Cost.** Faust sends each changelog record through its producer buffer, one asyncio hand-off
  per record (~0.5 ms each here, measured: a batch job writing most keys once per batch ran at
  ~1,000 events/s). The changelog records are instead produced by the worker's confluent-kafka
  producer once the outputs are acknowledged, in the format Faust's recovery reads (JSON key,
  JSON value, ``None`` for a deletion), to the table's own changelog topic.

The Faust table keeps doing what it is good at: declaring the changelog topic, recovering the
local copy from it on assignment, and serving standbys.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import orjson
from faust.types import TableT

log = logging.getLogger(__name__)

_DELETED = object()


class ChangelogRecord(NamedTuple):
    """One state write as a changelog message (``value`` None: deletion)."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None


_json = orjson.dumps
"""JSON bytes (Faust's ``json`` codec reads them back on recovery)."""

MAX_RECORD_BYTES = 512 * 1024
"""Default largest changelog value written as one record; a larger state is written in pieces
(the worker passes ``Settings.state_record_max_bytes``).

Why: Kafka refuses a record over its ``message.max.bytes`` (1 MB by default, in librdkafka's
producer and on the broker), and the worker stopped with MSG_SIZE_TOO_LARGE: a KPI group then
held every open pane of its windows, and a 30-day backfill grew one past 1.2 MB. Open panes now
live in day buckets (``stream_processors/kpis.py``), but nothing else bounds a state's size (a
busy day, a case with a very long history), so the store never sends a record the broker would
refuse. Half the limit leaves room for the key and the record's overhead.
"""
_PIECE = "\x1f#piece#"
"""Key suffix of a piece: ``<key>\\x1f#piece#<i>`` (its value is text, never an engine state)."""
_CHUNKED = "\x1fpieces"
"""The head record of a chunked state: ``[partition, {"\\x1fpieces": n}]``, after its n pieces."""


def piece_key(key: str, i: int) -> str:
    return f"{key}{_PIECE}{i}"


class PartitionedTableStore:
    """The engines' :class:`~stream_processors.api.StateStore` over a Faust table.

    Values in the table are ``[partition, state]``. Reads see the pending writes of the current
    call on top of the table, restricted to :attr:`owned` partitions. Writes stay pending until
    :meth:`changelog` turns them into records and :meth:`apply` puts them in the local table.
    """

    def __init__(
        self,
        table: TableT[str, Any],
        num_partitions: int,
        base_key: Callable[[str], str] | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.table = table
        self.max_record_bytes = max_record_bytes
        """A state whose JSON is longer is written in pieces (see :data:`MAX_RECORD_BYTES`)."""
        self.piece_chars = max(16, max_record_bytes // 4)
        """Characters of JSON per piece: at most 4 bytes each once the piece is a JSON string
        (UTF-8; a quote or backslash takes 2), so a piece's record stays under the limit."""
        self.base_key = base_key
        """Maps a derived key (e.g. ``<group>@<window>``) to the source key whose partition it shares."""
        self.local = table.data
        """The table's local store: read and written directly (the changelog is produced by us)."""
        self.num_partitions = num_partitions
        self._owned: frozenset[int] = frozenset()
        self._pending: dict[str, Any] = {}
        self._routes: dict[str, int] = {}
        self._before: dict[str, bytes] = {}
        """JSON of each stored value as the current call first read it (see :meth:`discard`)."""
        self._encoded: dict[str, tuple[int, bytes]] = {}
        """Partition and changelog JSON of each pending write, from :meth:`changelog` to :meth:`apply`."""
        self._pieces: dict[str, int] = {}
        """How many pieces the changelog holds for each chunked key (see :attr:`max_record_bytes`)."""
        self._encoded_pieces: dict[str, int] = {}
        """The piece counts of the pending writes, from :meth:`changelog` to :meth:`apply`."""
        self._written: dict[str, tuple[list[Any], bytes]] = {}
        """The stored ``[partition, state]`` lists :meth:`apply` wrote, with their changelog JSON.

        That JSON is the pre-image the next call that reads the key needs: reusing it saves
        encoding every state a call reads (about 3% of a replay's CPU, 6% of a live worker's).
        It is used only while the table still holds that very list, so a value put there by
        anything else (Faust's recovery, :meth:`discard`) is encoded afresh.
        """

    @property
    def owned(self) -> frozenset[int]:
        """The partitions whose keys this worker reads and writes (set on every assignment)."""
        return self._owned

    @owned.setter
    def owned(self, partitions: frozenset[int]) -> None:
        self._owned = partitions
        self._written.clear()  # keys of partitions that left would be kept alive for nothing

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    # -- routing ----------------------------------------------------------------------------
    def route(self, partition_by_key: Mapping[str, int]) -> None:
        """Declare the source partition of the keys the next call may create."""
        self._routes.update(partition_by_key)

    def _partition_for_write(self, key: str) -> int:
        stored = self.local.get(key)
        if stored is not None:
            return int(stored[0])
        if key in self._routes:
            return self._routes[key]
        if self.base_key is not None:
            base = self.base_key(key)
            if base != key:
                if base in self._pending or base in self.local or base in self._routes:
                    return self._partition_for_write(base)
        # A key no source message named: fall back to librdkafka's default partitioner
        # (CRC32 of the key), which is how this repo's producers spread keys.
        partition = zlib.crc32(key.encode()) % self.num_partitions
        log.warning("state key without a source partition; using crc32", extra={"partition": partition})
        return partition

    # -- StateStore ---------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        pending = self._pending.get(key, _DELETED)
        if pending is not _DELETED or key in self._pending:
            return default if pending is _DELETED else pending
        stored = self.local.get(key)
        if stored is None or stored[0] not in self._owned:
            return default
        if key not in self._before:
            # The engines update the state they read in place: keep its pre-image so a call
            # that raises can be undone (the JSON the last apply wrote, or ~1 µs of orjson).
            written = self._written.get(key)
            self._before[key] = written[1] if written is not None and written[0] is stored else _json(stored)
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
        if not isinstance(key, str):  # every key is a str
            return False
        if key in self._pending:
            return self._pending[key] is not _DELETED
        stored = self.local.get(key)
        return stored is not None and stored[0] in self._owned

    def items(self) -> Iterator[tuple[str, Any]]:
        owned = self._owned
        pending = self._pending
        for key, stored in list(self.local.items()):
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

    def changelog(self) -> list[ChangelogRecord]:
        """The pending writes as changelog records (Faust's JSON table format).

        One record per key; a value whose JSON is over :attr:`max_record_bytes` is written as
        pieces followed by a head record under the key itself (same partition, so recovery
        reads them in that order; :meth:`reassemble` joins them). Pieces a key no longer needs
        (it shrank or was deleted) are deleted.
        """
        topic = self.changelog_topic
        out = []
        encoded, encoded_pieces = self._encoded, self._encoded_pieces
        encoded.clear()
        encoded_pieces.clear()
        for key, value in self._pending.items():
            partition = self._partition_for_write(key)
            pieces = 0
            if value is _DELETED:
                if key in self.local:
                    out.append(ChangelogRecord(topic, partition, _json(key), None))
            else:
                data = _json([partition, value])
                encoded[key] = (partition, data)
                if len(data) <= self.max_record_bytes:
                    out.append(ChangelogRecord(topic, partition, _json(key), data))
                else:
                    text = data.decode()
                    step = self.piece_chars
                    for start in range(0, len(text), step):
                        piece = _json([partition, text[start : start + step]])
                        out.append(ChangelogRecord(topic, partition, _json(piece_key(key, pieces)), piece))
                        pieces += 1
                    out.append(
                        ChangelogRecord(topic, partition, _json(key), _json([partition, {_CHUNKED: pieces}]))
                    )
            for stale in range(pieces, self._pieces.get(key, 0)):
                out.append(ChangelogRecord(topic, partition, _json(piece_key(key, stale)), None))
            encoded_pieces[key] = pieces
        return out

    def reassemble(self) -> int:
        """After a recovery: join chunked states from their pieces; returns how many.

        Faust's recovery puts every changelog record in the local table as it is, pieces and
        head records included. The engines must see the state, not its pieces, so the worker
        calls this on every assignment before anything reads the store.
        """
        local = self.local
        heads: list[tuple[str, int]] = []
        pieces: list[str] = []
        for key, stored in list(local.items()):  # one pass over the recovered table
            if not (isinstance(stored, list) and len(stored) == 2):
                continue
            if isinstance(stored[1], dict) and _CHUNKED in stored[1]:
                heads.append((key, int(stored[1][_CHUNKED])))
            elif isinstance(stored[1], str) and _PIECE in key:  # engine states are never bare strings
                pieces.append(key)
        for key, count in heads:
            parts = [local.get(piece_key(key, i)) for i in range(count)]
            missing = [i for i, part in enumerate(parts) if part is None]
            if missing:
                raise RuntimeError(
                    f"state {key!r} in {self.changelog_topic}: pieces {missing} of {count} are missing "
                    "from the changelog; the state cannot be recovered"
                )
            local[key] = orjson.loads("".join(part[1] for part in parts))  # type: ignore[index]
            self._pieces[key] = count
            self._written.pop(key, None)
        for key in pieces:
            del local[key]
        return len(heads)

    def apply(self) -> int:
        """Put the pending writes into the local table (after their changelog was flushed)."""
        local = self.local
        encoded, written = self._encoded, self._written
        pieces = self._pieces
        for key, count in self._encoded_pieces.items():
            if count:
                pieces[key] = count
            else:
                pieces.pop(key, None)
        n = 0
        try:
            for key, value in self._pending.items():
                if value is _DELETED:
                    if key in local:
                        del local[key]
                    written.pop(key, None)
                else:
                    sent = encoded.get(key)
                    if sent is None:  # applied without a changelog (not the worker's path)
                        local[key] = [self._partition_for_write(key), value]
                        written.pop(key, None)
                    else:
                        local[key] = entry = [sent[0], value]
                        written[key] = (entry, sent[1])
                n += 1
        finally:
            self._pending.clear()
            self._routes.clear()
            self._before.clear()
            encoded.clear()
            self._encoded_pieces.clear()
        return n

    def discard(self) -> None:
        """Undo the current call (it raised; nothing was produced): drop its pending writes and
        put back every stored value it read, as it was before the engine changed it in place.

        Without the restore, the worker's one-by-one retry of a failed batch would see the
        events the failed call had already folded in (their ids in the case's seen list) and
        skip them as duplicates: their outputs would never be produced.
        """
        local = self.local
        for key, before in self._before.items():
            local[key] = orjson.loads(before)
        self._pending.clear()
        self._routes.clear()
        self._before.clear()
        self._encoded.clear()
        self._encoded_pieces.clear()
