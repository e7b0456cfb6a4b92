"""Signed model snapshots: a pickle and its metadata, authenticated with HMAC-SHA256.

Layout of a snapshot blob (format 2, written since key rotation)::

    b"DLSNAP2\\n" | key id (8 bytes) | HMAC-SHA256 (32 bytes) | len(meta) (4 bytes, big endian)
                | meta JSON | pickle

The HMAC covers the magic, the key id, the model name and the registry namespace the snapshot
was sealed for (length-prefixed; they are not stored in the blob, the reader supplies the ones it
expects), the metadata and the pickle. So a blob copied into another model's slot or another
namespace is refused like an altered one. The key id (:func:`key_id`) is a fingerprint of the
signing key, not a secret: it tells the reader which of its keys to check with, so several keys
can verify while the first one signs (key rotation, see README "Security").

Format 1 (``b"DLSNAP1\\n" | HMAC | len(meta) | meta | pickle``, the HMAC over everything after
it) is still read, checked against every configured key; it binds no name or namespace, so the
registry also compares the signed metadata's ``model`` with the slot it read the blob from.

:func:`open_snapshot` verifies the HMAC **before** unpickling: a pickle from an untrusted source
can run code, so an unsigned or altered blob is refused without ever being read.

A pickle names classes by import path. Snapshots written before driftline took one root import
name say ``models.learner``, ``streams.records``; :class:`_Unpickler` finds those where they live
now, so every snapshot ever written still loads. This module imports nothing but the errors.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from driftline.core.errors import SnapshotError, SnapshotSignatureError

#: The format written now.
MAGIC = b"DLSNAP2\n"
#: The first format, still read (no key id, no name or namespace bound in).
MAGIC_V1 = b"DLSNAP1\n"
_KEY_ID_SIZE = 8
_MAC_SIZE = 32
_LEN = struct.Struct(">I")
_HEADER_V2 = len(MAGIC) + _KEY_ID_SIZE + _MAC_SIZE
_HEADER_V1 = len(MAGIC_V1) + _MAC_SIZE

#: Secrets as callers give them: one key, or several (the first signs, all verify).
Secrets = bytes | Sequence[bytes]


def key_id(key: bytes) -> str:
    """A key's public fingerprint (16 hex digits): names the key in a snapshot's header and in
    ``driftline models show``, and tells nothing about the key itself.

    >>> key_id(b"k" * 16)
    'e746a50ba543ff94'
    """
    return hashlib.sha256(b"driftline-key-id" + key).digest()[:_KEY_ID_SIZE].hex()


@dataclass(frozen=True)
class KeyRing:
    """The keys snapshots are checked with; the first one signs.

    >>> ring = KeyRing.of([b"new-key-0123456789", b"old-key-0123456789"])
    >>> ring.signing_id == key_id(b"new-key-0123456789"), len(ring.ids)
    (True, 2)
    """

    keys: tuple[bytes, ...]

    @classmethod
    def of(cls, secrets: Secrets | KeyRing) -> KeyRing:
        if isinstance(secrets, KeyRing):
            return secrets
        keys = (bytes(secrets),) if isinstance(secrets, bytes | bytearray) else tuple(secrets)
        if not keys or not all(keys):
            raise ValueError("a snapshot key ring needs at least one non-empty key")
        return cls(keys)

    @property
    def signing_key(self) -> bytes:
        return self.keys[0]

    @property
    def signing_id(self) -> str:
        return key_id(self.signing_key)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id(k) for k in self.keys)

    def by_id(self, wanted: str) -> bytes | None:
        for key in self.keys:
            if hmac.compare_digest(key_id(key), wanted):
                return key
        return None


@dataclass(frozen=True)
class SnapshotHeader:
    """What a blob says of itself before verification: its format and, from format 2, the id of
    the key that signed it (``None`` for format 1)."""

    format: int
    key_id: str | None


def seal_snapshot(
    obj: Any, meta: dict[str, Any], secrets: Secrets | KeyRing, *, model: str = "", namespace: str = ""
) -> bytes:
    """Pickle ``obj``, attach ``meta`` and sign both with the first key, bound to ``model`` and
    ``namespace``.

    Examples
    --------
    >>> blob = seal_snapshot({"w": 1.5}, {"version": 3}, b"k" * 16, model="m", namespace="ns")
    >>> open_snapshot(blob, b"k" * 16, model="m", namespace="ns")
    ({'w': 1.5}, {'version': 3})
    >>> open_snapshot(blob[:-1] + b"!", b"k" * 16, model="m", namespace="ns")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.core.errors.SnapshotSignatureError: snapshot signature does not match (altered, ...): refused
    >>> open_snapshot(blob, b"k" * 16, model="other", namespace="ns")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.core.errors.SnapshotSignatureError: snapshot signature does not match ...
    """
    return seal_pickled(pickle.dumps(obj, protocol=5), meta, secrets, model=model, namespace=namespace)


def seal_pickled(
    payload: bytes, meta: dict[str, Any], secrets: Secrets | KeyRing, *, model: str = "", namespace: str = ""
) -> bytes:
    """:func:`seal_snapshot` for an object already pickled (so ``meta`` can tell its size)."""
    ring = KeyRing.of(secrets)
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    body = _LEN.pack(len(meta_bytes)) + meta_bytes + payload
    kid = bytes.fromhex(ring.signing_id)
    return MAGIC + kid + _mac_v2(ring.signing_key, kid, model, namespace, body) + body


def read_header(blob: bytes) -> SnapshotHeader:
    """The format and key id a blob claims (unverified: for listings, never for trust)."""
    if isinstance(blob, bytes | bytearray):
        if blob.startswith(MAGIC) and len(blob) >= _HEADER_V2:
            return SnapshotHeader(2, bytes(blob[len(MAGIC) : len(MAGIC) + _KEY_ID_SIZE]).hex())
        if blob.startswith(MAGIC_V1):
            return SnapshotHeader(1, None)
    raise SnapshotSignatureError("not a driftline snapshot (bad header): refused")


def read_meta(
    blob: bytes, secrets: Secrets | KeyRing, *, model: str = "", namespace: str = ""
) -> dict[str, Any]:
    """The verified metadata of a snapshot, without unpickling its model."""
    body = _verified_body(blob, KeyRing.of(secrets), model, namespace)
    return _split(body)[0]


def open_snapshot(
    blob: bytes, secrets: Secrets | KeyRing, *, model: str = "", namespace: str = ""
) -> tuple[Any, dict[str, Any]]:
    """Verify a snapshot's signature (with the key its header names, for ``model`` in
    ``namespace``), then unpickle it; raises :class:`SnapshotError` if unusable."""
    meta, payload = _split(_verified_body(blob, KeyRing.of(secrets), model, namespace))
    try:
        return _Unpickler(io.BytesIO(payload)).load(), meta
    except Exception as exc:  # a signed but unreadable pickle (e.g. a class since renamed)
        raise SnapshotError(f"snapshot is signed but cannot be unpickled: {exc!r}") from exc


#: Packages that were top-level import names before driftline took one root name.
_FORMER_TOP_LEVEL = ("models", "streams", "api")
#: Modules that moved further than under ``driftline.``.
_MOVED = {"streams.records": "driftline.core.records", "driftline.errors": "driftline.core.errors"}


def current_module(module: str) -> str:
    """Where a module a pickle names lives now.

    >>> current_module("models.learner"), current_module("streams.records"), current_module("river.tree")
    ('driftline.models.learner', 'driftline.core.records', 'river.tree')
    """
    if module in _MOVED:
        return _MOVED[module]
    if module.split(".", 1)[0] in _FORMER_TOP_LEVEL:
        return f"driftline.{module}"
    return module


class _Unpickler(pickle.Unpickler):
    """Unpickles snapshots written under former import paths (only ever after the HMAC check)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(current_module(module), name)


def _bound(text: str) -> bytes:
    """A name as the MAC reads it: length-prefixed, so ("ab", "c") and ("a", "bc") differ."""
    data = text.encode()
    return _LEN.pack(len(data)) + data


def _mac_v2(key: bytes, kid: bytes, model: str, namespace: str, body: bytes) -> bytes:
    signed = MAGIC + kid + _bound(model) + _bound(namespace) + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _verified_body(blob: bytes, ring: KeyRing, model: str, namespace: str) -> bytes:
    header = read_header(blob)
    if header.format == 1:
        mac = blob[len(MAGIC_V1) : _HEADER_V1]
        body = bytes(blob[_HEADER_V1:])
        # Format 1 names no key: any configured key that matches will do.
        if not any(hmac.compare_digest(mac, hmac.new(k, body, hashlib.sha256).digest()) for k in ring.keys):
            raise SnapshotSignatureError("snapshot signature does not match any configured key: refused")
        return body
    key = ring.by_id(header.key_id or "")
    if key is None:
        raise SnapshotSignatureError(
            f"snapshot signed with key id {header.key_id}, which is not among the configured keys "
            f"({', '.join(ring.ids)}): refused (add the key that signed it to DRIFTLINE_SECRET_KEY)"
        )
    kid = bytes(blob[len(MAGIC) : len(MAGIC) + _KEY_ID_SIZE])
    mac = blob[len(MAGIC) + _KEY_ID_SIZE : _HEADER_V2]
    body = bytes(blob[_HEADER_V2:])
    if not hmac.compare_digest(mac, _mac_v2(key, kid, model, namespace, body)):
        raise SnapshotSignatureError(
            "snapshot signature does not match (altered, or sealed for another model or namespace): refused"
        )
    return body


def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
    if len(body) < _LEN.size:
        raise SnapshotError("snapshot is truncated")
    (meta_len,) = _LEN.unpack_from(body)
    meta_end = _LEN.size + meta_len
    try:
        meta = json.loads(body[_LEN.size : meta_end])
    except ValueError as exc:
        raise SnapshotError(f"snapshot metadata is not JSON: {exc}") from exc
    return meta, body[meta_end:]
