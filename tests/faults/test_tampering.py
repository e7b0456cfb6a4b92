"""Fault 7, snapshot tampering, and key rotation, with the real broker, Redis, worker and API.

Someone who can write to Redis but does not hold the signing key alters stored versions: a
flipped byte, one version's metadata on another's model, another model's blob in this model's
slot, and a pickle that would write a marker file when loaded, sealed with a key of their own
under the real key's (public) id. Meanwhile the operator rotates the key (``A`` to ``B,A``).

Each altered version is refused by the API, which keeps serving the good model it has, and by
the restarted worker, which resumes from the newest version that verifies (signed with the old
key), relearns what the refused ones held, raises a ``snapshot`` alert per refused version, and
signs its next snapshot with the new key. The marker file is never created.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from driftline.api.main import create_app
from driftline.kafka import ensure_topics
from driftline.models.registry import ModelRegistry
from driftline.models.snapshot import MAGIC, key_id, read_header, seal_pickled
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.simulator import run_simulator

pytestmark = pytest.mark.integration

KEY_A = "driftline-test-key-a-0123456789"
KEY_B = "driftline-test-key-b-0123456789"
EVENTS = 600
CHUNK = 120
#: magic, key id, HMAC
HEADER = len(MAGIC) + 8 + 32
READING = {
    "device_id": "sensor-001",
    "readings": {"temperature": 22.0, "humidity": 45.0, "vibration": 0.4, "voltage": 231.0},
}

T = TypeVar("T")


def on_registry(settings: Settings, action: Callable[[ModelRegistry, Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await action(settings.registry(redis), redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if last := condition():
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def worker(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``driftline worker`` with ``settings``, stopped (SIGTERM) on leaving; its log shown if the
    test fails inside."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}, **settings.as_env()}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "driftline", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    except BaseException:
        print(f"--- {log_path} ---\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-80:]))
        raise
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def blob_key(settings: Settings, model: str, version: int) -> str:
    return settings.keys.blob(model, version)


def get_blob(settings: Settings, model: str, version: int) -> bytes:
    async def get(registry: ModelRegistry, redis: Redis) -> bytes:
        blob = await redis.get(blob_key(settings, model, version))
        assert isinstance(blob, bytes)
        return blob

    return on_registry(settings, get)


def set_blob(settings: Settings, model: str, version: int, blob: bytes) -> None:
    async def put(registry: ModelRegistry, redis: Redis) -> None:
        await redis.set(blob_key(settings, model, version), blob)

    on_registry(settings, put)


def parts(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """A format-2 blob as (header, metadata section with its length, pickle)."""
    (meta_len,) = struct.unpack_from(">I", blob, HEADER)
    meta_end = HEADER + 4 + meta_len
    return blob[:HEADER], blob[HEADER:meta_end], blob[meta_end:]


class WritesMarker:
    """Unpickling it creates ``path``: what an attacker's pickle would do (and worse)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def describe(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/models/default").json()
    return body


def served_version(client: TestClient) -> int:
    response = client.post("/predict", json=READING)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def test_tampered_versions_are_refused_the_api_keeps_serving_and_the_worker_resumes_from_the_newest_good(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    models = (ModelSpec(name="default"), ModelSpec(name="other"))
    # Short group timeouts: the restarted worker joins sooner (see DESIGN.md, the embedded broker).
    quick = {"models": models, "broker_session_timeout": 6.0, "broker_rebalance_timeout": 6.0}
    with_a = make_settings(secret_key=KEY_A, **quick)
    rotated = make_settings(secret_key=f"{KEY_B},{KEY_A}", **quick)
    marker = tmp_path / "unpickled-attacker-code-ran"

    # The marker pickle works: were it ever unpickled, the marker would exist.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(WritesMarker(probe)))
    assert probe.exists()

    # --- 1. a worker learns with key A: several versions ---------------------------------------
    ensure_topics(with_a)
    with worker(with_a, tmp_path / "worker-a.log"):
        # In chunks, each learned before the next is sent: a version (at least) per chunk.
        for sent in range(CHUNK, EVENTS + 1, CHUNK):
            assert run_simulator(with_a, count=CHUNK, rate=2000, progress=False) == CHUNK
            wait_for(
                lambda sent=sent: any(
                    m["events_learned"] >= sent
                    for m in on_registry(with_a, lambda r, _: r.versions("default"))
                ),
                60,
                f"{sent} events learned",
            )
    listing = on_registry(with_a, lambda r, _: r.versions("default"))
    assert all(m["key_id"] == key_id(KEY_A.encode()) for m in listing)
    newest = listing[-1]["version"]
    learned = {m["version"]: m["events_learned"] for m in listing}
    assert newest >= 4 and learned[newest - 3] < EVENTS, learned  # room to walk back, and relearn
    other_versions = {m["version"] for m in on_registry(with_a, lambda r, _: r.versions("other"))}
    assert newest - 1 in other_versions

    with TestClient(create_app(rotated)) as client:
        # --- 2. the API with keys "B,A" serves the version signed with A ------------------------
        wait_for(lambda: describe(client)["served_version"] == newest, 20, f"v{newest} served")
        assert served_version(client) == newest

        # --- 3. the attacker (no key) alters stored versions -----------------------------------
        good_header, good_meta, good_pickle = parts(get_blob(with_a, "default", newest))
        # (a) a flipped byte in the newest version
        set_blob(with_a, "default", newest, good_header + good_meta + good_pickle[:-1] + b"\x00")
        # (c) another model's blob (same key, same version number) in this model's slot
        set_blob(with_a, "default", newest - 1, get_blob(with_a, "other", newest - 1))
        # (b) one version's metadata on another version's model
        header, _, model = parts(get_blob(with_a, "default", newest - 2))
        set_blob(
            with_a, "default", newest - 2, header + parts(get_blob(with_a, "default", newest - 3))[1] + model
        )
        # (d) a new "version": a pickle that writes the marker, sealed for this model and
        # namespace with the attacker's key under the real signing key's id
        forged = seal_pickled(
            pickle.dumps(WritesMarker(marker)),
            {"model": "default", "version": newest + 1},
            b"the-attackers-own-key-0123456789",
            model="default",
            namespace=rotated.namespace,
        )
        forged = MAGIC + bytes.fromhex(key_id(KEY_B.encode())) + forged[len(MAGIC) + 8 :]

        async def plant(registry: ModelRegistry, redis: Redis) -> int:
            version = int(await redis.incr(rotated.keys.model("default", "next_version")))
            await redis.set(blob_key(rotated, "default", version), forged)
            await redis.zadd(rotated.keys.model("default", "versions"), {str(version): version})
            await redis.hset(rotated.keys.model("default", "aliases"), "latest", version)
            await redis.publish(registry.channel, json.dumps({"model": "default", "version": version}))
            return version

        planted = on_registry(rotated, plant)
        assert planted == newest + 1
        wait_for(lambda: describe(client)["refused_snapshots"] >= 1, 20, "the forged version refused")
        assert "signature does not match" in describe(client)["last_refusal"]
        assert served_version(client) == newest

        # The operator points the champion at the altered versions: each is refused in turn.
        for version, why in (
            (newest - 1, "another model or namespace"),
            (newest - 2, "signature does not match"),
        ):
            refused_before = describe(client)["refused_snapshots"]
            on_registry(rotated, lambda r, _, v=version: r.promote("default", v, by="test"))
            wait_for(
                lambda before=refused_before: describe(client)["refused_snapshots"] > before,
                20,
                f"v{version} refused",
            )
            assert why in describe(client)["last_refusal"]
            assert served_version(client) == newest
        # back to following latest (the forged version): still refused, still serving the good one
        on_registry(
            rotated, lambda r, redis: redis.hdel(rotated.keys.model("default", "aliases"), "champion")
        )
        assert served_version(client) == newest
        assert not marker.exists()

        # --- 4. the worker restarts with "B,A": walks back past all four -----------------------
        resumed_from = newest - 3
        with worker(rotated, tmp_path / "worker-ba.log"):
            relearned = wait_for(
                lambda: [
                    m
                    for m in on_registry(rotated, lambda r, _: r.versions("default"))
                    if m["version"] > planted and m["events_learned"] >= EVENTS
                ],
                60,
                "a new version holding every event again",
            )[0]
            # Exactly the events: what the refused versions held was relearned, nothing twice.
            assert relearned["events_learned"] == EVENTS
            assert relearned["key_id"] == key_id(KEY_B.encode())
            blob = get_blob(rotated, "default", relearned["version"])
            assert read_header(blob).key_id == key_id(KEY_B.encode())
            # The API swaps to it: it verifies with B.
            wait_for(lambda: served_version(client) == relearned["version"], 20, "the new version served")

        alerts = on_registry(rotated, lambda r, _: r.alerts("default", signal="snapshot"))
        assert sorted(a["version"] for a in alerts) == [newest - 2, newest - 1, newest, planted]
        assert all(f"resumed from version {resumed_from}" in a["message"] for a in alerts)
        assert {a["severity"] for a in alerts} == {"warning"}
        signatures = on_registry(rotated, lambda r, _: r.signatures("default"))
        assert signatures[resumed_from] == {"format": 2, "key_id": key_id(KEY_A.encode()), "verifies": "ok"}
        assert "not match" in signatures[planted]["verifies"]
    assert not marker.exists()
    assert not on_registry(rotated, lambda r, _: r.alerts("other", signal="snapshot"))
