"""Signed snapshots: what was sealed comes back, anything altered or foreign is refused unread;
several keys verify (the first signs), and a snapshot is bound to its model and namespace."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from typing import Any

import pytest

from driftline.core.errors import DriftlineError, SnapshotError, SnapshotSignatureError
from driftline.models.snapshot import (
    MAGIC,
    MAGIC_V1,
    KeyRing,
    key_id,
    open_snapshot,
    read_header,
    read_meta,
    seal_snapshot,
)

SECRET = b"k" * 32
MAC_SIZE = 32
KEY_ID_SIZE = 8
HEADER = len(MAGIC) + KEY_ID_SIZE + MAC_SIZE
META = {"model": "default", "version": 3, "events_learned": 1200, "metric": {"name": "MAE", "value": 0.25}}
OBJ = {"weights": {"a": 1.5, "b": -0.25}, "intercept": 0.125, "history": list(range(50))}


def sealed(obj: Any = OBJ, meta: dict[str, Any] | None = None, secret: bytes = SECRET) -> bytes:
    return seal_snapshot(obj, META if meta is None else meta, secret)


def bound(text: str) -> bytes:
    return struct.pack(">I", len(text.encode())) + text.encode()


def signed_body(body: bytes, secret: bytes = SECRET, model: str = "", namespace: str = "") -> bytes:
    """A blob with a valid signature around an arbitrary body (what only a secret holder can make)."""
    kid = bytes.fromhex(key_id(secret))
    signed = MAGIC + kid + bound(model) + bound(namespace) + body
    return MAGIC + kid + hmac.new(secret, signed, hashlib.sha256).digest() + body


def signed_v1(body: bytes, secret: bytes = SECRET) -> bytes:
    """A blob in the first format (no key id, nothing bound but the body), as earlier code sealed."""
    return MAGIC_V1 + hmac.new(secret, body, hashlib.sha256).digest() + body


class ExplodesWhenUnpickled:
    """Pickles fine; unpickling calls ``int("...")``, which raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("unpickling ran",))


def test_a_snapshot_round_trips_object_and_meta() -> None:
    obj, meta = open_snapshot(sealed(), SECRET)
    assert obj == OBJ
    assert meta == META


def test_the_blob_has_the_documented_layout() -> None:
    blob = seal_snapshot(OBJ, META, SECRET, model="default", namespace="ns")
    meta_bytes = json.dumps(META, sort_keys=True, separators=(",", ":")).encode()
    assert blob.startswith(MAGIC)
    kid = blob[len(MAGIC) : len(MAGIC) + KEY_ID_SIZE]
    assert kid.hex() == key_id(SECRET) == hashlib.sha256(b"driftline-key-id" + SECRET).hexdigest()[:16]
    body = blob[HEADER:]
    signed = MAGIC + kid + bound("default") + bound("ns") + body
    assert blob[len(MAGIC) + KEY_ID_SIZE : HEADER] == hmac.new(SECRET, signed, hashlib.sha256).digest()
    assert body[:4] == struct.pack(">I", len(meta_bytes))
    assert body[4 : 4 + len(meta_bytes)] == meta_bytes
    assert pickle.loads(body[4 + len(meta_bytes) :]) == OBJ


def test_sealing_is_deterministic() -> None:
    assert sealed() == sealed()


def test_a_bytearray_blob_is_accepted() -> None:
    assert open_snapshot(bytearray(sealed()), SECRET) == (OBJ, META)  # type: ignore[arg-type]


def flip_positions() -> list[tuple[str, int]]:
    blob = sealed()
    meta_start = HEADER + 4
    meta_len = len(json.dumps(META, sort_keys=True, separators=(",", ":")))
    pickle_start = meta_start + meta_len
    mac_start = len(MAGIC) + KEY_ID_SIZE
    return [
        ("magic-first", 0),
        ("magic-version", len(MAGIC) - 2),
        ("magic-newline", len(MAGIC) - 1),
        ("key-id-first", len(MAGIC)),
        ("key-id-last", mac_start - 1),
        ("mac-first", mac_start),
        ("mac-middle", mac_start + 16),
        ("mac-last", HEADER - 1),
        ("meta-length", HEADER + 3),
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
    with pytest.raises(
        SnapshotSignatureError, match="^snapshot signed with key id .* not among the configured keys"
    ):
        open_snapshot(blob, SECRET)
    with pytest.raises(SnapshotSignatureError):
        read_meta(blob, SECRET)


@pytest.mark.parametrize(
    "keep", [0, 4, len(MAGIC), len(MAGIC) + 6, len(MAGIC) + 10, HEADER - 1, HEADER, HEADER + 2, -1, -20]
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
    [
        b"",
        b"hello",
        b"DLSNAP3\n" + b"\x00" * 64,
        b"DLSNAP2\n" + b"\x00" * 6,
        pickle.dumps(OBJ),
        json.dumps(META).encode(),
    ],
    ids=["empty", "text", "other-version", "short-header", "bare-pickle", "json"],
)
def test_bytes_that_are_not_a_snapshot_are_refused_as_such(blob: bytes) -> None:
    with pytest.raises(SnapshotSignatureError, match="^not a driftline snapshot \\(bad header\\): refused$"):
        open_snapshot(blob, SECRET)


def test_something_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(SnapshotSignatureError):
        open_snapshot("DLSNAP2\n" + "x" * 64, SECRET)  # type: ignore[arg-type]


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


# --- key rotation and binding ------------------------------------------------------------------

KEY_A = b"key-a-0123456789abcdef"
KEY_B = b"key-b-0123456789abcdef"


def test_after_rotation_old_snapshots_verify_and_new_ones_are_signed_with_the_new_key() -> None:
    old = seal_snapshot(OBJ, META, [KEY_A], model="m", namespace="ns")
    rotated = KeyRing.of([KEY_B, KEY_A])  # DRIFTLINE_SECRET_KEY="B,A"
    assert open_snapshot(old, rotated, model="m", namespace="ns") == (OBJ, META)
    new = seal_snapshot(OBJ, META, rotated, model="m", namespace="ns")
    assert read_header(old).key_id == key_id(KEY_A)
    assert read_header(new).key_id == key_id(KEY_B) == rotated.signing_id
    assert open_snapshot(new, rotated, model="m", namespace="ns") == (OBJ, META)
    # Once the old key is dropped, only what it signed is refused.
    assert open_snapshot(new, [KEY_B], model="m", namespace="ns") == (OBJ, META)
    with pytest.raises(SnapshotSignatureError, match=f"key id {key_id(KEY_A)}"):
        open_snapshot(old, [KEY_B], model="m", namespace="ns")


def test_a_snapshot_signed_with_a_key_not_configured_is_refused_with_its_key_id() -> None:
    blob = seal_snapshot(OBJ, META, KEY_A)
    with pytest.raises(SnapshotSignatureError) as caught:
        read_meta(blob, [KEY_B, SECRET])
    assert str(caught.value) == (
        f"snapshot signed with key id {key_id(KEY_A)}, which is not among the configured keys "
        f"({key_id(KEY_B)}, {key_id(SECRET)}): refused (add the key that signed it to DRIFTLINE_SECRET_KEY)"
    )


def test_a_claimed_key_id_does_not_help_without_the_key() -> None:
    """An attacker can read the key id (it is public) and put it in a forged header: the HMAC
    still has to be made with the key itself."""
    forged = bytearray(seal_snapshot(OBJ, META, b"attacker-key-0123456789", model="m"))
    forged[len(MAGIC) : len(MAGIC) + KEY_ID_SIZE] = bytes.fromhex(key_id(KEY_A))
    with pytest.raises(SnapshotSignatureError, match="^snapshot signature does not match"):
        open_snapshot(bytes(forged), [KEY_A], model="m")


@pytest.mark.parametrize(
    ("model", "namespace"),
    [("other", "ns"), ("m", "other-ns"), ("", ""), ("mn", "s")],
    ids=["another-model", "another-namespace", "unbound", "boundary-moved"],
)
def test_a_snapshot_opened_for_another_model_or_namespace_is_refused(model: str, namespace: str) -> None:
    blob = seal_snapshot(OBJ, META, KEY_A, model="m", namespace="ns")
    with pytest.raises(SnapshotSignatureError, match="sealed for another model or namespace"):
        open_snapshot(blob, KEY_A, model=model, namespace=namespace)
    with pytest.raises(SnapshotSignatureError):
        read_meta(blob, KEY_A, model=model, namespace=namespace)


def test_a_first_format_snapshot_verifies_with_any_configured_key() -> None:
    body = struct.pack(">I", 2) + b"{}" + pickle.dumps(OBJ)
    blob = signed_v1(body, KEY_A)
    assert read_header(blob).format == 1 and read_header(blob).key_id is None
    assert open_snapshot(blob, [KEY_B, KEY_A], model="any", namespace="any") == (OBJ, {})
    with pytest.raises(SnapshotSignatureError, match="^snapshot signature does not match any configured key"):
        open_snapshot(blob, [KEY_B, SECRET])


@pytest.mark.parametrize("keys", [[], [b""], [KEY_A, b""]], ids=["none", "empty", "one-empty"])
def test_a_key_ring_needs_keys(keys: list[bytes]) -> None:
    with pytest.raises(ValueError, match="at least one non-empty key"):
        KeyRing.of(keys)
