"""Per-device state and the featurizer that both the stream and the API run.

The ingest agent cleans each accepted event (:mod:`driftline.streams.cleaning`), then calls
:func:`featurize` and checkpoints the :class:`DeviceState` to Redis; ``POST /predict`` loads that
state and calls the very same function on the request's reading, so serving sees the features
training saw. What is computed is declared by a :class:`FeatureSpec` (``DRIFTLINE_FEATURES``).

Features per sensor ``s`` (after cleaning, so imputed and clipped values are in place), names
as they appear in the vector:

==========================  =====================================================================
``s``                       the reading
``s_{stat}_{n}``            mean / std / min / max of the last ``n`` readings (this one included)
``s_{stat}_{T}s``           the same over readings of the last ``T`` seconds of event time
``s_ewma_{H}s``             exponentially weighted mean, weights halving every ``H`` s of event time
``s_delta``, ``s_rate``     change since the previous reading, and that change per second
``s_lag_{k}``               the reading ``k`` readings ago
``a_minus_b``, ``a_over_b`` differences and ratios between sensors (declared pairs)
``tod_sin``, ``tod_cos``    time of day on a circle; ``dow_sin``, ``dow_cos`` day of the week
==========================  =====================================================================

Statistics are population statistics (``std`` of one reading is 0), kept running per window, so a
reading costs the same whatever the window sizes (see ``docs/design.md``). A feature that cannot be
computed yet (no previous reading, too few readings for a lag) is left out: River models treat a
missing feature as unknown.

Every value is finite. Cleaning bounds each reading's magnitude
(:data:`~driftline.streams.cleaning.MAX_MAGNITUDE`), and the statistics cannot overflow on any
finite input anyway (a square of 1e200 is beyond a float: the spread is computed on scaled
values). A feature that still comes out infinite (a ratio over a denominator near 0, a
difference of two values near the float limit) is left out of that event's vector and counted
in the device's ``non_finite_features``; a non-finite reading never enters the device state, and
a stored state is read without any (:meth:`DeviceState.from_json`). No model and no response
ever sees NaN or infinity.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import math
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Event ids remembered per device for deduplication.
RECENT_IDS = 1000

#: The device counter of features left out of a vector because they came out infinite or NaN.
NON_FINITE_FEATURES = "non_finite_features"

Stat = Literal["mean", "std", "min", "max"]


class SensorPair(BaseModel):
    """A feature from two sensors: ``a - b`` (diff) or ``a / b`` (ratio)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    op: Literal["diff", "ratio"] = "diff"

    @property
    def name(self) -> str:
        return f"{self.a}_{'minus' if self.op == 'diff' else 'over'}_{self.b}"


class FeatureSpec(BaseModel):
    """Which features to compute: the same spec in the worker and the API gives the same vectors.

    Examples
    --------
    >>> FeatureSpec().schema_hash() == FeatureSpec().schema_hash()
    True
    >>> FeatureSpec(windows=(5,)).schema_hash() == FeatureSpec().schema_hash()
    False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: tuple[int, ...] = Field((10,), description="rolling windows, in readings")
    time_windows: tuple[float, ...] = Field((300.0,), description="rolling windows, in seconds")
    stats: tuple[Stat, ...] = ("mean", "std", "min", "max")
    ewma_half_lives: tuple[float, ...] = Field((60.0,), description="EWMA half-lives, in seconds")
    delta: bool = True
    rate: bool = True
    lags: tuple[int, ...] = (1,)
    time_of_day: bool = True
    day_of_week: bool = True
    pairs: tuple[SensorPair, ...] = (SensorPair(a="temperature", b="humidity", op="diff"),)
    #: Most readings a time window keeps per sensor (bounds memory for fast devices).
    max_time_window_points: int = Field(1000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        """A preset's name, or ``{"preset": name, ...}``: the preset with some keys changed."""
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and "preset" in data:
            overrides = {k: v for k, v in data.items() if k != "preset"}
            name = data["preset"]
            if name not in PRESETS:
                raise ValueError(
                    f"unknown features preset {name!r}: use one of {', '.join(PRESETS)}, "
                    "or give the keys themselves"
                )
            return {**PRESETS[name], **overrides}
        return data

    def describe(self) -> str:
        """The preset this spec is, by name, or ``custom``; for startup logs.

        >>> FeatureSpec(preset="raw").describe(), FeatureSpec().describe()
        ('raw (the readings only)', 'default (windows, EWMA, delta, rate, lag, pair, time of day)')
        >>> FeatureSpec.model_validate({"preset": "raw", "lags": [1]}).describe()
        'custom'
        """
        for name, values in PRESETS.items():
            if self == FeatureSpec.model_validate(values):
                return f"{name} ({PRESET_NOTES[name]})"
        return "custom"

    def schema_hash(self) -> str:
        """A short fingerprint of this spec: models record it, the API checks it."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def history(self) -> int:
        """Readings per sensor the count windows and lags need."""
        return max((*self.windows, *(k + 1 for k in self.lags), 1))


#: Named feature specs (``DRIFTLINE_FEATURES=raw``); a preset's keys can still be changed one by
#: one (``{"preset": "raw", "lags": [1, 2]}``).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "raw": {
        "windows": (),
        "time_windows": (),
        "ewma_half_lives": (),
        "delta": False,
        "rate": False,
        "lags": (),
        "time_of_day": False,
        "day_of_week": False,
        "pairs": (),
    },
}
PRESET_NOTES = {"default": "windows, EWMA, delta, rate, lag, pair, time of day", "raw": "the readings only"}


class RecentIds:
    """The newest ``maxlen`` event ids of a device, as 8-byte digests in one ring of bytes.

    Checked for every event (deduplication). A thousand ids as strings in a deque and a set cost
    about 90 KB a device (90 MB for 1,000 devices, growing until each has sent 1,000 events); as
    digests, 8 KB, flat, and a membership test is one ``bytearray.find`` (``memmem``, in C). Two
    different ids share a digest with probability 2^-64: a device would need some 10^16 events
    inside its window for one of them to be taken for a retry.

    Examples
    --------
    >>> ids = RecentIds(["a", "b"], maxlen=2)
    >>> ids.append("c")
    >>> "a" in ids, "b" in ids, "c" in ids, len(ids)
    (False, True, True, 2)
    >>> RecentIds.from_json(ids.to_json(), maxlen=2) == ids
    True
    """

    DIGEST_BYTES = 8

    def __init__(self, ids: Iterable[str] = (), maxlen: int = RECENT_IDS) -> None:
        self.maxlen = maxlen
        #: digests, oldest first, each DIGEST_BYTES long
        self._ring = bytearray()
        for event_id in ids:
            self.append(event_id)

    @staticmethod
    def digest(event_id: str) -> bytes:
        return hashlib.blake2b(event_id.encode(), digest_size=RecentIds.DIGEST_BYTES).digest()

    def _holds(self, digest: bytes) -> bool:
        ring, size = self._ring, self.DIGEST_BYTES
        at = ring.find(digest)
        while at != -1 and at % size:  # a match straddling two digests is no match
            at = ring.find(digest, at + 1)
        return at != -1

    def digest_if_new(self, event_id: str) -> bytes | None:
        """``event_id``'s :meth:`digest` if it is not among the newest ids (``None``: a retry),
        for :meth:`push_new` once its event is accepted. The ingest stage checks every event,
        then remembers it: one digest and one search of the ring per event, not two of each."""
        digest = self.digest(event_id)
        return None if self._holds(digest) else digest

    def push_new(self, digest: bytes) -> None:
        """Remember an id by the digest :meth:`digest_if_new` gave (nothing pushed since)."""
        self._ring += digest
        excess = len(self._ring) - self.maxlen * self.DIGEST_BYTES
        if excess > 0:
            del self._ring[:excess]  # the oldest fall off

    def append(self, event_id: str) -> None:
        digest = self.digest_if_new(event_id)
        if digest is not None:
            self.push_new(digest)

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self._holds(self.digest(event_id))

    def __len__(self) -> int:
        return len(self._ring) // self.DIGEST_BYTES

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecentIds) and self._ring == other._ring

    def __repr__(self) -> str:
        return f"RecentIds(<{len(self)} digests>, maxlen={self.maxlen})"

    def to_json(self) -> str:
        """The digests, oldest first, as base64 text."""
        return base64.b64encode(self._ring).decode("ascii")

    @classmethod
    def from_json(cls, stored: Any, maxlen: int = RECENT_IDS) -> RecentIds:
        """What :meth:`to_json` wrote, or a list of ids as states stored before the digests were."""
        ids = cls(maxlen=maxlen)
        if isinstance(stored, str):
            raw = base64.b64decode(stored, validate=True)
            whole = len(raw) - len(raw) % cls.DIGEST_BYTES  # a torn tail is no digest
            ids._ring = bytearray(raw[max(whole - maxlen * cls.DIGEST_BYTES, 0) : whole])
        else:
            for event_id in stored or ():
                ids.append(str(event_id))
        return ids


class TimedReadings:
    """One sensor's readings of the last seconds, oldest first: event times and values as two
    arrays of doubles (16 bytes a reading, not a list of ``[ts, value]`` lists), read from
    :attr:`head` on (older ones are evicted by moving the head, and cut off in bulk now and then).

    Examples
    --------
    >>> timed = TimedReadings([1.0, 2.0], [10.0, 20.0])
    >>> len(timed), timed.points()
    (2, [[1.0, 10.0], [2.0, 20.0]])
    >>> TimedReadings.from_json({"ts": [1.0, 2.0], "values": [10.0, 20.0]}) == timed
    True
    """

    __slots__ = ("head", "ts", "values")

    def __init__(self, ts: Iterable[float] = (), values: Iterable[float] = ()) -> None:
        self.ts = array("d", ts)
        self.values = array("d", values)
        self.head = 0

    def __len__(self) -> int:
        return len(self.ts) - self.head

    def points(self) -> list[list[float]]:
        """``[ts, value]`` per reading, oldest first."""
        return [[t, x] for t, x in zip(self.ts[self.head :], self.values[self.head :], strict=True)]

    def to_json(self) -> dict[str, list[float]]:
        return {"ts": self.ts[self.head :].tolist(), "values": self.values[self.head :].tolist()}

    @classmethod
    def from_json(cls, data: Any) -> TimedReadings:
        """What :meth:`to_json` wrote, or the ``[[ts, value], ...]`` lists states were stored as
        before (driftline up to ef90b99); a pair with a non-finite member is left out."""
        pairs = (
            zip(data.get("ts", ()), data.get("values", ()), strict=False) if isinstance(data, dict) else data
        )
        kept = [p for p in map(_finite_list, pairs) if len(p) == 2]
        return cls([t for t, _ in kept], [x for _, x in kept])

    def compact(self) -> int:
        """Cut the evicted readings off the arrays; how many there were (indices shift by it)."""
        cut = self.head
        del self.ts[:cut]
        del self.values[:cut]
        self.head = 0
        return cut

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TimedReadings)
            and self.ts[self.head :] == other.ts[other.head :]
            and self.values[self.head :] == other.values[other.head :]
        )

    def __repr__(self) -> str:
        return f"TimedReadings({self.ts[self.head :].tolist()!r}, {self.values[self.head :].tolist()!r})"


@dataclass
class DeviceState:
    """What one device's cleaning and features depend on, kept between its events.

    Examples
    --------
    >>> s = DeviceState()
    >>> _ = featurize(s, {"t": 1.0}, datetime(2026, 1, 1, 6), FeatureSpec())
    >>> DeviceState.from_json(s.to_json()) == s
    True
    """

    events: int = 0
    #: Last value per sensor (real or imputed): the base of deltas and of "last" imputation.
    last: dict[str, float] = field(default_factory=dict)
    #: Event time of each sensor's last value, for rates.
    last_at: dict[str, float] = field(default_factory=dict)
    #: The last readings per sensor, newest last (count windows and lags).
    windows: dict[str, deque[float]] = field(default_factory=dict)
    #: The readings per sensor of the longest time window, in event-time order.
    timed: dict[str, TimedReadings] = field(default_factory=dict)
    #: Per sensor, per half-life: ``[ewma, ts]``.
    ewma: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: Event time (epoch s) of each sensor's last real reading: imputation bridges gaps from it.
    last_seen: dict[str, float] = field(default_factory=dict)
    recent_ids: RecentIds = field(default_factory=RecentIds)
    #: Highest event time accepted; events older than it minus the allowed lateness are late.
    watermark: float | None = None
    last_ts: float | None = None
    counts: Counter[str] = field(default_factory=Counter)
    #: The feature vector of the device's last event: ``GET /devices/{id}/features``.
    features: dict[str, float] = field(default_factory=dict)
    #: Running statistics of each sensor's windows, derived from :attr:`windows` and
    #: :attr:`timed`, rebuilt from them when a sensor is next featurized after a load. Their
    #: sums are stored with the state (``"running"``), so that a restored state computes
    #: bit for bit what the uninterrupted one would have: the stream across a restart and
    #: ``POST /predict`` give the very same features. A state stored without them (an older
    #: driftline's) has them recomputed from the windows, equal to about 1e-15.
    running: dict[str, _SensorRunning] = field(default_factory=dict, compare=False, repr=False)
    #: The stored sums of sensors not featurized since the state was loaded.
    stored_sums: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "last": self.last,
            "last_at": self.last_at,
            "windows": {name: list(values) for name, values in self.windows.items()},
            "timed": {name: readings.to_json() for name, readings in self.timed.items()},
            "ewma": self.ewma,
            "last_seen": self.last_seen,
            "recent_ids": self.recent_ids.to_json(),
            "watermark": self.watermark,
            "last_ts": self.last_ts,
            "counts": dict(self.counts),
            "features": self.features,
            "running": {
                **self.stored_sums,
                **{name: running.to_json() for name, running in self.running.items()},
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        """The state :meth:`to_json` wrote (or an older driftline: time windows as ``[ts, value]``
        lists). Any non-finite value in it (a state checkpointed before the statistics were
        overflow-safe may hold ``Infinity`` or ``NaN``) is left out, so a poisoned device heals on
        its next reading instead of carrying it for good."""
        return cls(
            events=int(data.get("events", 0)),
            last=_finite_values(data.get("last", {})),
            last_at=_finite_values(data.get("last_at", {})),
            windows={
                k: deque(_finite_list(v), maxlen=max(len(v), 1)) for k, v in data.get("windows", {}).items()
            },
            timed={k: TimedReadings.from_json(v) for k, v in data.get("timed", {}).items()},
            ewma={
                k: {h: p for h, p in ((h, _finite_list(p)) for h, p in v.items()) if len(p) == 2}
                for k, v in data.get("ewma", {}).items()
            },
            last_seen=_finite_values(data.get("last_seen", {})),
            recent_ids=RecentIds.from_json(data.get("recent_ids")),
            watermark=data.get("watermark"),
            last_ts=data.get("last_ts"),
            counts=Counter(data.get("counts", {})),
            features=_finite_values(data.get("features", {})),
            stored_sums=dict(data.get("running", {})),
        )

    def window_mean(self, name: str) -> float | None:
        values = self.windows.get(name)
        return sum(values) / len(values) if values else None


def _finite_values(values: dict[str, Any]) -> dict[str, float]:
    """``values`` as floats, without the non-finite ones."""
    return {k: x for k, x in ((k, float(v)) for k, v in values.items()) if math.isfinite(x)}


def _finite_list(values: Iterable[Any]) -> list[float]:
    """``values`` as floats, without the non-finite ones (a ``[ts, value]`` pair missing one is
    then shorter than two, and left out whole)."""
    return [x for x in map(float, values) if math.isfinite(x)]


ALL_STATS: tuple[Stat, ...] = ("mean", "std", "min", "max")


def _mean(values: Iterable[float]) -> float:
    """The mean, finite for any finite values (their plain sum may not be: 2 x 1e308)."""
    values = list(values)
    n = len(values)
    mean = sum(values) / n
    if math.isfinite(mean):
        return mean
    return sum([x / n for x in values])  # each term is at most max|x| / n: no overflow


def _std(values: Iterable[float], mean: float) -> float:
    """The population standard deviation, without overflowing where the result is a float.

    The usual sum of squares overflows once a deviation passes ~1e154 (a square of 1e200 is
    beyond a float, and ``** 2`` raises): then it is computed on deviations scaled by the
    largest one, and scaled back. Only a spread itself beyond the float range is infinite.
    """
    values = list(values)
    n = len(values)
    try:
        variance = sum([(x - mean) ** 2 for x in values]) / n
    except OverflowError:
        variance = math.inf
    if math.isfinite(variance):
        return math.sqrt(max(variance, 0.0))
    # x - mean may itself overflow (1e308 - -1e308): scale each term before subtracting
    scale = max(abs(x) for x in (*values, mean))
    return scale * math.sqrt(sum([(x / scale - mean / scale) ** 2 for x in values]) / n)


def _put_exact(
    features: dict[str, float], names: tuple[str, ...], values: Iterable[float], wanted: tuple[Stat, ...]
) -> None:
    """``features[name] = stat(values)`` computed from the values themselves: the overflow-safe
    path, for an out-of-order reading's window and for windows holding huge values."""
    values = list(values)
    mean = _mean(values)
    for stat, name in zip(wanted, names, strict=True):
        if stat == "mean":
            features[name] = mean
        elif stat == "std":
            features[name] = _std(values, mean)
        elif stat == "min":
            features[name] = min(values)
        else:
            features[name] = max(values)


#: Past this, a running sum (or the square of a deviation) is near the float limit: the window's
#: statistics are then computed from its values (:func:`_put_exact`), which cannot overflow.
_LARGE = 1e150

#: The least share of the spread around the shift the variance must be to be read from the sums
#: (else the sums are recomputed around the mean first): a thousandth loses at most 3 digits of
#: the 16, and keeps the std of a window that has become constant at 0.
_TRUSTED = 1e-3


class _Running:
    """Mean, std, min and max of a sliding window, kept up to date in O(1) per reading.

    Readings enter at the back (:meth:`add`) and leave from the front (:meth:`remove`). The
    mean and variance come from running sums of deviations from :attr:`shift` (a recent mean, so
    the sums stay small and the variance does not cancel away); :meth:`put` declines once the
    window has turned over since they were computed, or when the variance has cancelled away, and
    the caller recomputes them from the window's values (:meth:`recompute_sums`), so rounding cannot
    pile up. Min and max are the fronts of monotonic queues: lists read from a head index, the same
    values as the window less those a later reading outranks.

    Examples
    --------
    >>> w = _Running()
    >>> for x in (4.0, 1.0, 7.0):
    ...     w.add(x)
    >>> w.remove(4.0)
    >>> features = {}
    >>> w.put(features, ("mean", "std", "min", "max"), ("mean", "std", "min", "max"), 0.0)
    True
    >>> features
    {'mean': 4.0, 'std': 3.0, 'min': 1.0, 'max': 7.0}
    """

    __slots__ = ("changes", "high", "highs", "low", "lows", "n", "s1", "s2", "shift", "start")

    def __init__(self, values: Iterable[float] = (), start: int = 0) -> None:
        self.reset(values, start)

    def reset(self, values: Iterable[float], start: int = 0) -> None:
        """The window is ``values`` (oldest first): every figure recomputed from them."""
        values = list(values)
        self.lows: list[float] = []  # non-decreasing from self.low on: the window's minimum first
        self.highs: list[float] = []  # non-increasing from self.high on
        self.low = self.high = 0
        self.shift = self.s1 = self.s2 = 0.0
        self.n = self.changes = 0
        for x in values:
            self.add(x)
        self.recompute_sums(values)
        self.start = start  # a time window's first reading: its index in the sensor's TimedReadings

    def recompute_sums(self, values: Iterable[float]) -> None:
        """The running sums recomputed from the window's ``values``, around their mean."""
        values = list(values)
        self.n = n = len(values)
        self.changes = 0  # readings added or removed since the sums were last recomputed
        if not n:
            self.shift = self.s1 = self.s2 = 0.0
            return
        shift = sum(values) / n
        if not -_LARGE < shift < _LARGE:
            shift = 0.0  # the sums are beyond the fast path anyway: put() computes from values
        self.shift = shift
        self.s1 = sum([x - shift for x in values])
        self.s2 = sum([(x - shift) * (x - shift) for x in values])

    def add(self, x: float) -> None:
        if not self.n:  # the first reading of an empty window: the sums start around it
            self.shift = x if -_LARGE < x < _LARGE else 0.0
            self.s1 = self.s2 = 0.0
        self.n += 1
        self.changes += 1
        d = x - self.shift
        self.s1 += d
        self.s2 += d * d
        lows, highs = self.lows, self.highs
        while len(lows) > self.low and lows[-1] > x:
            lows.pop()
        lows.append(x)
        while len(highs) > self.high and highs[-1] < x:
            highs.pop()
        highs.append(x)

    def slide(self, x: float, out: float | None) -> None:
        """``x`` enters the window and ``out`` (its oldest reading, if it is full) leaves it:
        :meth:`add` then :meth:`remove`, in one call (this runs per sensor per window per event)."""
        if out is None:
            self.add(x)
            return
        self.changes += 2
        shift = self.shift
        d, e = x - shift, out - shift
        self.s1 += d - e
        self.s2 += d * d - e * e
        lows, highs = self.lows, self.highs
        while len(lows) > self.low and lows[-1] > x:
            lows.pop()
        lows.append(x)
        while len(highs) > self.high and highs[-1] < x:
            highs.pop()
        highs.append(x)
        if lows[self.low] == out:
            self.low += 1
            if self.low > 32 and 2 * self.low > len(lows):
                del lows[: self.low]
                self.low = 0
        if highs[self.high] == out:
            self.high += 1
            if self.high > 32 and 2 * self.high > len(highs):
                del highs[: self.high]
                self.high = 0

    def remove(self, x: float) -> None:
        """``x``, the window's oldest reading, leaves it."""
        self.n -= 1
        self.changes += 1
        d = x - self.shift
        self.s1 -= d
        self.s2 -= d * d
        # x is at a queue's front unless a later reading outranked it: then it is not there,
        # and whatever is at the front is a later reading, and differs from x.
        if self.lows[self.low] == x:
            self.low += 1
            if self.low > 32 and 2 * self.low > len(self.lows):
                del self.lows[: self.low]
                self.low = 0
        if self.highs[self.high] == x:
            self.high += 1
            if self.high > 32 and 2 * self.high > len(self.highs):
                del self.highs[: self.high]
                self.high = 0

    def put(
        self, features: dict[str, float], names: tuple[str, ...], wanted: tuple[Stat, ...], value: float
    ) -> bool:
        """``features[name] = stat(window)`` for each wanted stat; ``value``'s own figures for an
        empty window. ``False`` (nothing written) when the sums are due to be recomputed, or too
        large to trust: the caller then recomputes them, or computes from the window's values."""
        n = self.n
        if not n:
            _put_exact(features, names, (value,), wanted)
            return True
        if self.changes > 2 * n + 16:
            return False  # turned over since the sums were recomputed: time to recompute them
        d = self.s1 / n
        spread = self.s2 / n  # the variance around the shift: the variance, plus d squared
        variance = spread - d * d
        # Also false for NaN. A variance far below the spread around the shift (the mean has
        # moved a long way since, relative to the std) has lost digits to that subtraction.
        if not (-_LARGE < d < _LARGE and spread < _LARGE and variance >= _TRUSTED * spread):
            return False
        mean = self.shift + d
        if wanted is ALL_STATS:  # the default, spelled out: this runs per sensor per window per event
            features[names[0]] = mean
            features[names[1]] = math.sqrt(variance) if variance > 0.0 else 0.0
            features[names[2]] = self.lows[self.low]
            features[names[3]] = self.highs[self.high]
            return True
        for stat, name in zip(wanted, names, strict=True):
            if stat == "mean":
                features[name] = mean
            elif stat == "std":
                features[name] = math.sqrt(variance) if variance > 0.0 else 0.0
            elif stat == "min":
                features[name] = self.lows[self.low]
            else:
                features[name] = self.highs[self.high]
        return True


class _SensorRunning:
    """One sensor's running window statistics, and what they were derived from: rebuilt when the
    state's window containers are not these (a state loaded, or set by hand) or the spec changed.

    :attr:`count` and :attr:`timed` pair each window with its size and feature names, so that
    :func:`featurize` loops over one list per kind."""

    __slots__ = ("count", "plan", "timed", "timed_readings", "timed_windows", "values")

    def __init__(
        self,
        plan: _Plan,
        names: _SensorNames,
        values: deque[float],
        timed: TimedReadings | None,
        stored: Any = None,
    ) -> None:
        self.plan = plan
        self.values = values
        self.timed_readings = timed
        stored = stored if isinstance(stored, dict) else {}
        recent = list(values)
        self.count: list[tuple[int, tuple[str, ...], _Running]] = []
        for n, window_names in names.count:
            window = _Running(recent[-n:])
            sums = _stored_sums(stored.get("count", {}).get(str(n)), 4)
            if sums is not None:
                window.shift, window.s1, window.s2, changes = sums
                window.changes = int(changes)
            self.count.append((n, window_names, window))
        self.timed = [(seconds, window_names, _Running()) for seconds, window_names in names.timed]
        self.timed_windows = [window for _, _, window in self.timed]
        if timed is not None:
            self.reset_timed(timed)
            kept = len(timed)
            for seconds, _, window in self.timed:
                sums = _stored_sums(stored.get("timed", {}).get(_label(seconds)), 5)
                if sums is not None and 0 <= sums[4] <= kept and sums[4].is_integer():
                    start = timed.head + int(sums[4])
                    window.reset(timed.values[start:], start)
                    window.shift, window.s1, window.s2, changes, _ = sums
                    window.changes = int(changes)

    def reset_timed(self, timed: TimedReadings) -> None:
        """Each time window holds every reading kept; the next reading in order moves each
        window's start to where its window begins."""
        head = timed.head
        kept = timed.values[head:]
        for window in self.timed_windows:
            window.reset(kept, start=head)

    def to_json(self) -> dict[str, Any]:
        """The running sums, to store with the state: the rest is rebuilt from its windows."""
        head = self.timed_readings.head if self.timed_readings is not None else 0
        return {
            "count": {str(n): [*_json_sums(w), w.changes] for n, _, w in self.count},
            "timed": {_label(sec): [*_json_sums(w), w.changes, w.start - head] for sec, _, w in self.timed},
        }


def _json_sums(window: _Running) -> list[float | None]:
    """A window's sums for JSON: a sum overflowed by a huge reading is ``null`` (read back as NaN,
    it sends that window to the exact path, as the overflowed sum does)."""
    return [x if math.isfinite(x) else None for x in (window.shift, window.s1, window.s2)]


def _stored_sums(stored: Any, size: int) -> list[float] | None:
    """``stored`` as ``size`` floats (a ``null`` sum is NaN: see :func:`_json_sums`), or
    ``None`` if it is not that (then the sums are recomputed)."""
    if not isinstance(stored, list) or len(stored) != size:
        return None
    try:
        sums = [math.nan if x is None else float(x) for x in stored]
    except (TypeError, ValueError):
        return None
    counters = sums[3:]
    return sums if all(math.isfinite(x) and x >= 0 for x in counters) else None


def _label(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class _SensorNames:
    """Every feature name one sensor gets under one spec, formatted once, not per event."""

    count: tuple[tuple[int, tuple[str, ...]], ...]
    timed: tuple[tuple[float, tuple[str, ...]], ...]
    ewma: tuple[tuple[float, str, str], ...]
    delta: str
    rate: str
    lags: tuple[tuple[int, str], ...]


@dataclass(eq=False)
class _Plan:
    """What :func:`featurize` derives from a spec, worked out once per spec, not per event."""

    history: int
    longest_window: float
    count_windows: tuple[tuple[int, int], ...]  # (n, its index in spec.windows)
    time_windows: tuple[float, ...]
    #: (a, b, whether a difference (else a ratio), the feature's name) per declared pair
    pairs: tuple[tuple[str, str, bool, str], ...]
    #: sensor -> its feature names, filled as sensors appear
    names: dict[str, _SensorNames] = field(default_factory=dict)


#: Per spec, by identity (hashing a pydantic model per event was a visible cost): the spec
#: itself, kept so that its id is not reused, and its plan.
_PLANS: dict[int, tuple[FeatureSpec, _Plan]] = {}


def _plan_for(spec: FeatureSpec) -> _Plan:
    found = _PLANS.get(id(spec))
    if found is None or found[0] is not spec:
        if len(_PLANS) >= 64:  # specs are few and long-lived; this only bounds a pathological caller
            _PLANS.clear()
        found = _PLANS[id(spec)] = (
            spec,
            _Plan(
                spec.history,
                max(spec.time_windows, default=0.0),
                tuple((n, i) for i, n in enumerate(spec.windows)),
                spec.time_windows,
                tuple((pair.a, pair.b, pair.op == "diff", pair.name) for pair in spec.pairs),
            ),
        )
    return found[1]


def _names(sensor: str, spec: FeatureSpec) -> _SensorNames:
    return _SensorNames(
        count=tuple((n, tuple(f"{sensor}_{stat}_{n}" for stat in spec.stats)) for n in spec.windows),
        timed=tuple(
            (sec, tuple(f"{sensor}_{stat}_{_label(sec)}" for stat in spec.stats)) for sec in spec.time_windows
        ),
        ewma=tuple((h, _label(h), f"{sensor}_ewma_{_label(h)}") for h in spec.ewma_half_lives),
        delta=f"{sensor}_delta",
        rate=f"{sensor}_rate",
        lags=tuple((k, f"{sensor}_lag_{k}") for k in spec.lags),
    )


def _sensor_state(
    state: DeviceState, name: str, plan: _Plan, names: _SensorNames
) -> tuple[deque[float], TimedReadings | None, _SensorRunning]:
    """A sensor's recent readings, time-window readings and running statistics, made to fit
    ``plan`` (a state just loaded, a spec changed): what :func:`featurize` updates."""
    values = state.windows.get(name)
    running = state.running.get(name)
    if values is None or values.maxlen != plan.history:
        resized = state.windows[name] = deque(values or (), maxlen=plan.history)
        if running is not None and running.values is values:
            running.values = resized  # the same readings: the running sums still hold
        values = resized
    timed = state.timed.get(name) if plan.time_windows else None
    if plan.time_windows and timed is None:
        timed = state.timed[name] = TimedReadings()
    if running is None or running.values is not values or running.timed_readings is not timed:
        # new, loaded, or its windows replaced by hand: from the stored sums, if any
        stored = state.stored_sums.pop(name, None)
        running = state.running[name] = _SensorRunning(plan, names, values, timed, stored)
    elif running.plan is not plan:
        # another spec object (maybe an equal one): the sums of windows it shares carry over
        running = state.running[name] = _SensorRunning(plan, names, values, timed, running.to_json())
    return values, timed, running


def featurize(
    state: DeviceState,
    readings: dict[str, float],
    ts: datetime,
    spec: FeatureSpec,
    *,
    at: float | None = None,
) -> dict[str, float]:
    """Update ``state`` with one clean reading and return its feature vector (``at``: the
    reading's epoch seconds, ``ts.timestamp()``, when the caller has worked them out already).

    Each window's statistics are kept running (:class:`_Running`): a reading costs the same
    whatever the window sizes.

    Examples
    --------
    >>> spec = FeatureSpec(windows=(2,), time_windows=(), ewma_half_lives=(), pairs=(), stats=("mean",),
    ...                    time_of_day=False, day_of_week=False)
    >>> s = DeviceState()
    >>> featurize(s, {"t": 10.0}, datetime(2026, 1, 1, 6, 0, 0), spec)
    {'t': 10.0, 't_mean_2': 10.0}
    >>> featurize(s, {"t": 12.0}, datetime(2026, 1, 1, 6, 0, 4), spec)
    {'t': 12.0, 't_mean_2': 11.0, 't_delta': 2.0, 't_rate': 0.5, 't_lag_1': 10.0}

    A reading that is not finite is left out (it never enters ``state``), as is a feature that
    comes out infinite; each is counted in ``state.counts["non_finite_features"]``:

    >>> featurize(s, {"t": 1e308, "u": float("nan")}, datetime(2026, 1, 1, 6, 0, 5), spec)["t_mean_2"]
    5e+307
    >>> s.counts["non_finite_features"]   # u
    1
    """
    if at is None:
        at = ts.timestamp()
    plan = _plan_for(spec)
    sensor_names = plan.names
    features: dict[str, float] = {}
    stats = ALL_STATS if spec.stats == ALL_STATS else spec.stats
    dropped = 0
    # Looked up once per event, not once per sensor: this loop is the featurizer's hot path.
    running_by, windows_by, timed_by, ewma_by = state.running, state.windows, state.timed, state.ewma
    last, last_at, delta, rate = state.last, state.last_at, spec.delta, spec.rate
    for name, value in readings.items():
        if not math.isfinite(value):  # cleaning lets none through; a direct caller might
            dropped += 1
            continue
        features[name] = value
        names = sensor_names.get(name)
        if names is None:
            if len(sensor_names) >= 4096:  # bounded even if devices invent sensor names
                sensor_names.clear()
            names = sensor_names[name] = _names(name, spec)
        running = running_by.get(name)
        if (
            running is not None
            and running.plan is plan
            and running.values is windows_by.get(name)
            and (not plan.time_windows or running.timed_readings is timed_by.get(name))
        ):  # the common case, checked inline: this runs per sensor per event
            values, timed = running.values, running.timed_readings
        else:
            values, timed, running = _sensor_state(state, name, plan, names)
        # rolling windows by count, and lags
        size = len(values)
        for n, _, window in running.count:
            window.slide(value, values[-n] if size >= n else None)
        values.append(value)
        for n, window_names, window in running.count:
            if not window.put(features, window_names, stats, value):
                window.recompute_sums(list(values)[-n:])  # also leaves the exact path once it can
                if not window.put(features, window_names, stats, value):
                    _put_exact(features, window_names, list(values)[-n:], stats)
        # rolling windows by event time; an out-of-order reading sees only what came before it
        if timed is not None:
            _timed_features(features, names, running, timed, at, value, plan, spec, stats)
        # exponentially weighted means, decaying with event time
        if names.ewma:
            slot = ewma_by.get(name)
            if slot is None:
                slot = ewma_by[name] = {}
            for half_life, key, feature in names.ewma:
                point = slot.get(key)
                if point is None:
                    slot[key] = [value, at]
                    features[feature] = value
                    continue
                mean, then = point
                weight = 1 - 0.5 ** (max(at - then, 0.0) / half_life)
                moved = mean + weight * (value - mean)
                if not math.isfinite(moved):  # value - mean overflowed: the same mean, as a blend
                    moved = (1 - weight) * mean + weight * value
                point[0] = moved
                if at > then:
                    point[1] = at
                features[feature] = moved
        previous, previous_at = last.get(name), last_at.get(name)
        if previous is not None:
            if delta:
                features[names.delta] = value - previous
            if rate and previous_at is not None and at > previous_at:
                features[names.rate] = (value - previous) / (at - previous_at)
        size = len(values)
        for k, lag_name in names.lags:
            if size > k:
                features[lag_name] = values[-1 - k]
        last[name] = value
        last_at[name] = at
    for a_name, b_name, diff, pair_name in plan.pairs:
        a, b = readings.get(a_name), readings.get(b_name)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            if diff:
                features[pair_name] = a - b
            elif b != 0:
                features[pair_name] = a / b
    if spec.time_of_day or spec.day_of_week:
        # UTC: the same moment gives the same features whatever zone the device wrote it in.
        # From the epoch seconds when the zone is known: converting the datetime costs more.
        if ts.tzinfo is not None:
            days, second = divmod(int(at // 1), 86400)
            weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
            hour = second // 3600 + second % 3600 // 60 / 60 + second % 60 / 3600
        else:
            weekday = ts.weekday()
            hour = ts.hour + ts.minute / 60 + ts.second / 3600
        if spec.time_of_day:
            features["tod_sin"] = math.sin(2 * math.pi * hour / 24)
            features["tod_cos"] = math.cos(2 * math.pi * hour / 24)
        if spec.day_of_week:
            day = weekday + hour / 24
            features["dow_sin"] = math.sin(2 * math.pi * day / 7)
            features["dow_cos"] = math.cos(2 * math.pi * day / 7)
    # The last guard: a difference, ratio or rate of finite values can still be beyond a float.
    # One sum tells whether every value is finite (NaN and infinity carry through it); only then
    # are they looked at one by one (a sum of finite values may overflow on its own).
    non_finite = []
    if not math.isfinite(sum(features.values())):
        non_finite = [name for name, value in features.items() if not math.isfinite(value)]
        for name in non_finite:
            del features[name]
    if dropped or non_finite:
        state.counts[NON_FINITE_FEATURES] += dropped + len(non_finite)
    state.events += 1
    state.last_ts = at
    state.features = features
    return features


def _timed_features(
    features: dict[str, float],
    names: _SensorNames,
    running: _SensorRunning,
    timed: TimedReadings,
    at: float,
    value: float,
    plan: _Plan,
    spec: FeatureSpec,
    stats: tuple[Stat, ...],
) -> None:
    """One reading into its sensor's time windows, and their statistics into ``features``."""
    ts, values, windows = timed.ts, timed.values, running.timed_windows
    if timed.head < len(ts) and at <= ts[-1]:
        _out_of_order(features, names, running, timed, at, value, plan, spec, stats)
        return
    ts.append(at)
    values.append(value)
    for window in windows:
        window.add(value)
    # Evict what every window has left, and beyond the most points a sensor keeps.
    horizon, max_points = at - plan.longest_window, spec.max_time_window_points
    head, end = timed.head, len(ts)
    while head < end and (ts[head] <= horizon or end - head > max_points):
        for window in windows:
            if window.start == head:
                window.remove(values[head])
                window.start += 1
        head += 1
    timed.head = head
    if head > 64 and 2 * head > end:
        cut = timed.compact()
        end -= cut
        for window in windows:
            window.start -= cut
    for seconds, window_names, window in running.timed:
        since, start = at - seconds, window.start
        while start < end and ts[start] <= since:
            window.remove(values[start])
            start += 1
        window.start = start
        if not window.put(features, window_names, stats, value):
            window.recompute_sums(values[start:])  # also leaves the exact path once it can
            if not window.put(features, window_names, stats, value):
                _put_exact(features, window_names, values[start:] or (value,), stats)


def _out_of_order(
    features: dict[str, float],
    names: _SensorNames,
    running: _SensorRunning,
    timed: TimedReadings,
    at: float,
    value: float,
    plan: _Plan,
    spec: FeatureSpec,
    stats: tuple[Stat, ...],
) -> None:
    """A reading at or before the newest one: into its place in time, its windows (which end at
    its own time) computed from their values, and the running statistics rebuilt. Rare."""
    ts, values = timed.ts, timed.values
    timed.compact()
    place = bisect.bisect_right(ts, at)
    ts.insert(place, at)
    values.insert(place, value)
    horizon, max_points = ts[-1] - plan.longest_window, spec.max_time_window_points
    cut = 0
    while cut < len(ts) and (ts[cut] <= horizon or len(ts) - cut > max_points):
        cut += 1
    timed.head = cut
    timed.compact()
    end = bisect.bisect_right(ts, at)
    for seconds, window_names in names.timed:
        start = bisect.bisect_right(ts, at - seconds, 0, end)
        # A reading as late as the longest window is evicted at once; it still belongs to its
        # own window.
        _put_exact(features, window_names, values[start:end] or (value,), stats)
    running.reset_timed(timed)
