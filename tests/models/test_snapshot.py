"""Signed snapshots: what was sealed comes back, anything altered or foreign is refused unread."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from typing import Any

import pytest

from driftline.core.errors import DriftlineError, SnapshotError, SnapshotSignatureError
from driftline.models.snapshot import MAGIC, open_snapshot, read_meta, seal_snapshot

SECRET = b"k" * 32
MAC_SIZE = 32
META = {"model": "default", "version": 3, "events_learned": 1200, "metric": {"name": "MAE", "value": 0.25}}
OBJ = {"weights": {"a": 1.5, "b": -0.25}, "intercept": 0.125, "history": list(range(50))}


def sealed(obj: Any = OBJ, meta: dict[str, Any] | None = None, secret: bytes = SECRET) -> bytes:
    return seal_snapshot(obj, META if meta is None else meta, secret)


def signed_body(body: bytes, secret: bytes = SECRET) -> bytes:
    """A blob with a valid signature around an arbitrary body (what only a secret holder can make)."""
    return MAGIC + hmac.new(secret, body, hashlib.sha256).digest() + body


class ExplodesWhenUnpickled:
    """Pickles fine; unpickling calls ``int("...")``, which raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("unpickling ran",))


def test_a_snapshot_round_trips_object_and_meta() -> None:
    obj, meta = open_snapshot(sealed(), SECRET)
    assert obj == OBJ
    assert meta == META


def test_the_blob_has_the_documented_layout() -> None:
    blob = sealed()
    meta_bytes = json.dumps(META, sort_keys=True, separators=(",", ":")).encode()
    assert blob.startswith(MAGIC)
    body = blob[len(MAGIC) + MAC_SIZE :]
    assert blob[len(MAGIC) : len(MAGIC) + MAC_SIZE] == hmac.new(SECRET, body, hashlib.sha256).digest()
    assert body[:4] == struct.pack(">I", len(meta_bytes))
    assert body[4 : 4 + len(meta_bytes)] == meta_bytes
    assert pickle.loads(body[4 + len(meta_bytes) :]) == OBJ


def test_sealing_is_deterministic() -> None:
    assert sealed() == sealed()


def test_a_bytearray_blob_is_accepted() -> None:
    assert open_snapshot(bytearray(sealed()), SECRET) == (OBJ, META)  # type: ignore[arg-type]


def flip_positions() -> list[tuple[str, int]]:
    blob = sealed()
    meta_start = len(MAGIC) + MAC_SIZE + 4
    meta_len = len(json.dumps(META, sort_keys=True, separators=(",", ":")))
    pickle_start = meta_start + meta_len
    return [
        ("magic-first", 0),
        ("magic-newline", len(MAGIC) - 1),
        ("mac-first", len(MAGIC)),
        ("mac-middle", len(MAGIC) + 16),
        ("mac-last", len(MAGIC) + MAC_SIZE - 1),
        ("meta-length", len(MAGIC) + MAC_SIZE + 3),
        ("meta-first", meta_start),
        ("meta-middle", meta_start + meta_len // 2),
        ("meta-last", pickle_start - 1),
        ("pickle-first", pickle_start),
        ("pickle-middle", (pickle_start + len(blob)) // 2),
        ("pickle-last", len(blob) - 1),
    ]


@pytest.mark.parametrize(("where", "position"), flip_positions(), ids=[w for w, _ in flip_positions()])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_any_flipped_byte_is_refused(where: str, position: int, mask: int) -> None:
    blob = bytearray(sealed())
    blob[position] ^= mask
    with pytest.raises(SnapshotSignatureError):
        open_snapshot(bytes(blob), SECRET)
    with pytest.raises(SnapshotSignatureError):
        read_meta(bytes(blob), SECRET)


def test_every_single_byte_flip_is_refused() -> None:
    blob = sealed({"w": 1.0}, {"v": 1})
    for position in range(len(blob)):
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(SnapshotSignatureError):
            open_snapshot(bytes(altered), SECRET)


def test_a_snapshot_signed_with_another_secret_is_refused() -> None:
    blob = sealed(secret=b"another-secret-of-enough-length")
    with pytest.raises(SnapshotSignatureError, match="^snapshot signature does not match: refused$"):
        open_snapshot(blob, SECRET)
    with pytest.raises(SnapshotSignatureError):
        read_meta(blob, SECRET)


@pytest.mark.parametrize(
    "keep", [0, 4, len(MAGIC), len(MAGIC) + 10, len(MAGIC) + MAC_SIZE, len(MAGIC) + MAC_SIZE + 2, -1, -20]
)
def test_a_truncated_snapshot_is_refused(keep: int) -> None:
    blob = sealed()[:keep]
    with pytest.raises(SnapshotSignatureError):
        open_snapshot(blob, SECRET)


def test_an_appended_byte_is_refused() -> None:
    with pytest.raises(SnapshotSignatureError):
        open_snapshot(sealed() + b"\x00", SECRET)


@pytest.mark.parametrize(
    "blob",
    [b"", b"hello", b"DLSNAP2\n" + b"\x00" * 64, pickle.dumps(OBJ), json.dumps(META).encode()],
    ids=["empty", "text", "other-version", "bare-pickle", "json"],
)
def test_bytes_that_are_not_a_snapshot_are_refused_as_such(blob: bytes) -> None:
    with pytest.raises(SnapshotSignatureError, match="^not a driftline snapshot \\(bad header\\): refused$"):
        open_snapshot(blob, SECRET)


def test_something_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(SnapshotSignatureError):
        open_snapshot("DLSNAP1\n" + "x" * 64, SECRET)  # type: ignore[arg-type]


def test_read_meta_returns_the_meta() -> None:
    assert read_meta(sealed(), SECRET) == META


def test_read_meta_does_not_unpickle() -> None:
    blob = sealed(ExplodesWhenUnpickled(), {"model": "m", "version": 1})
    assert read_meta(blob, SECRET) == {"model": "m", "version": 1}
    with pytest.raises(SnapshotError, match="signed but cannot be unpickled") as caught:
        open_snapshot(blob, SECRET)
    assert not isinstance(caught.value, SnapshotSignatureError)
    assert isinstance(caught.value.__cause__, ValueError)


def test_open_snapshot_verifies_before_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(pickle, "loads", lambda data: calls.append(data))
    blob = bytearray(sealed())
    blob[-1] ^= 0x01
    with pytest.raises(SnapshotSignatureError):
        open_snapshot(bytes(blob), SECRET)
    assert calls == []


def test_a_signed_body_too_short_for_its_length_field_is_truncated() -> None:
    with pytest.raises(SnapshotError, match="^snapshot is truncated$"):
        read_meta(signed_body(b"\x00\x01"), SECRET)


def test_signed_metadata_that_is_not_json_is_refused() -> None:
    with pytest.raises(SnapshotError, match="^snapshot metadata is not JSON"):
        read_meta(signed_body(struct.pack(">I", 3) + b"{no" + pickle.dumps(1)), SECRET)


def test_snapshot_errors_are_driftline_errors() -> None:
    assert issubclass(SnapshotSignatureError, SnapshotError)
    assert issubclass(SnapshotError, DriftlineError)
