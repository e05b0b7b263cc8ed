"""A dead letter must always be deliverable, whatever the size of the record it parks."""

from __future__ import annotations

import hashlib

from schemas import contracts
from schemas.codec import Codec
from stream_processors.outputs import MAX_DEAD_LETTER_BYTES, bounded_dead_letter


def _dead_letter(value: bytes, key: bytes | None = b"EXP-1") -> dict[str, object]:
    return {
        "dead_letter_id": "d" * 40,
        "source": "processor",
        "topic": contracts.CUSTOMS,
        "partition": 3,
        "offset": 1234,
        "key": key,
        "value": value,
        "reason": "too_large",
        "detail": "4000000 bytes exceeds the 1000000 byte limit",
        "received_at": 1_767_225_600_000,
    }


def test_small_dead_letters_are_untouched() -> None:
    record = _dead_letter(b"\x00" * 100)
    assert bounded_dead_letter(record) is record


def test_oversized_original_is_cut_with_its_length_and_digest() -> None:
    original = bytes(range(256)) * 16_000  # 4 MB
    record = _dead_letter(original)
    bounded = bounded_dead_letter(record)
    assert bounded["value"] == original[:MAX_DEAD_LETTER_BYTES]
    assert record["value"] == original, "the engine's record is not modified"
    detail = str(bounded["detail"])
    assert detail.startswith("4000000 bytes exceeds")
    assert str(len(original)) in detail and hashlib.sha256(original).hexdigest() in detail
    assert f"{contracts.CUSTOMS}/3@1234" in detail
    encoded = Codec().encode(contracts.DEAD_LETTERS, bounded)
    assert len(encoded) < 1_000_000  # fits Kafka's default message limit
    assert Codec().decode(contracts.DEAD_LETTERS, encoded)["value"] == original[:MAX_DEAD_LETTER_BYTES]
