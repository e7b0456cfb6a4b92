"""What travels on ``sensor-features``: feature records and labels, batched per model and source partition.

One message on ``sensor-features`` carries, for one model, what a batch of source messages from
one source partition produced: feature records of events messages (one event each or batched),
or labels. Its key is the model's name, so all of a model's input sits in one partition, in
order. One message per batch, not per source message: with one event per source message the
per-message costs (send, fetch, Faust's dispatch) would otherwise be paid for every event::

    b"DLF2" | header length (4 bytes, little endian) | header JSON | feature values (doubles)

    {"model": "default", "src": ["events", 3], "schema": "9f2c...",
     "shapes": [["temperature", "temperature_mean_10", ...]],
     "records": [{"o": 1207, "i": 0, "device_id": "d1", "event_id": "e1", "ts": 1.7e9,
                  "target": 3.2, "shape": 0, "imputed": [], "clipped": []}, ...]}
    {"model": "default", "src": ["labels", 0], "labels": [{"o": 88, "i": 0, "event_id": "e1", "label": 3.4}]}

A record's features are its shape's names zipped with its slice of the values.

``src`` (source topic and partition), ``o`` (source offset) and ``i`` (position in the source
message) identify each item for good: the learner drops any item at or before the last position
it learned from, which is how events re-emitted after an ingest crash are learned once.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

#: Source kinds on ``sensor-features``.
EVENTS = "events"
LABELS = "labels"

#: A label or target: a number (regression), a class (classification) or an anomaly flag.
Label = float | bool | str


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, and
# records are made and decoded for every event of every model. Treat them as immutable all the same.
@dataclass(slots=True)
class FeatureRecord:
    """One event's features, for one model."""

    model: str
    device_id: str
    event_id: str
    ts: float
    features: dict[str, float]
    target: Label | None
    source_partition: int
    source_offset: int
    #: Position in a batched message (0 for a single event): (offset, index) orders events.
    source_index: int = 0
    imputed: tuple[str, ...] = ()
    clipped: tuple[str, ...] = ()
    #: Hash of the FeatureSpec that computed ``features``.
    schema: str = ""

    source: str = EVENTS


@dataclass(slots=True)
class LabelRecord:
    """The ground truth for an event learned before it was known."""

    model: str
    event_id: str
    label: Label
    source_partition: int
    source_offset: int
    source_index: int = 0

    source: str = LABELS

    def item(self) -> dict[str, Any]:
        return {
            "o": self.source_offset,
            "i": self.source_index,
            "event_id": self.event_id,
            "label": self.label,
        }


Record = FeatureRecord | LabelRecord


#: Magic of a features message: a JSON header, then every feature value as a little-endian double.
MAGIC = b"DLF2"
_HEADER_LEN = struct.Struct("<I")
#: The values travel little endian; ``array`` holds them in the machine's order.
_BIG_ENDIAN = sys.byteorder == "big"


def encode(model: str, records: list[FeatureRecord] | list[LabelRecord]) -> bytes:
    """One ``sensor-features`` message for ``records``: of one kind, from one source partition,
    in their source order.

    Feature values travel as raw doubles, not JSON text: exact, and formatting floats as text
    was the single largest cost of the hop. Feature names are listed once per distinct set.

    Examples
    --------
    >>> recs = [FeatureRecord("m", "d", "e1", 0.0, {"x": 1.0, "y": 0.1}, 2.0, 3, 7)]
    >>> decode(encode("m", recs)) == recs
    True
    """
    first = records[0]
    header: dict[str, Any] = {"model": model, "src": [first.source, first.source_partition]}
    values = array("d")
    if isinstance(first, FeatureRecord):
        shapes: dict[tuple[str, ...], int] = {}
        items = []
        for record in records:
            if not isinstance(record, FeatureRecord):
                raise TypeError("one features message holds records of one kind")
            if record.source_partition != first.source_partition:
                raise ValueError("one features message holds records of one source partition")
            features = record.features
            names = tuple(features)
            shape = shapes.get(names)
            if shape is None:
                shape = shapes[names] = len(shapes)
            values.extend(features.values())
            items.append(
                {
                    "o": record.source_offset,
                    "i": record.source_index,
                    "device_id": record.device_id,
                    "event_id": record.event_id,
                    "ts": record.ts,
                    "target": record.target,
                    "shape": shape,
                    "imputed": record.imputed,
                    "clipped": record.clipped,
                }
            )
        header |= {"schema": first.schema, "shapes": list(shapes), "records": items}
    else:
        header["labels"] = [r.item() for r in records if isinstance(r, LabelRecord)]
        if len(header["labels"]) != len(records):
            raise TypeError("one features message holds records of one kind")
        if any(r.source_partition != first.source_partition for r in records):
            raise ValueError("one features message holds records of one source partition")
    if _BIG_ENDIAN:
        values.byteswap()
    head = _dumps(header)
    return MAGIC + _HEADER_LEN.pack(len(head)) + head + values.tobytes()


def _dumps(header: dict[str, Any]) -> bytes:
    try:
        # orjson: the header's JSON costs a fifth of the standard library's (docs/design.md, §7).
        return orjson.dumps(header)
    except TypeError:
        # What orjson refuses and json writes (an integer label beyond 64 bits): rare, kept exact.
        return json.dumps(header, separators=(",", ":")).encode()


#: Bounds on one features message: Kafka refuses messages over 1 MiB by default, and a batch of
#: batched events messages can hold many thousand records.
MAX_RECORDS_PER_MESSAGE = 1000
MAX_VALUES_PER_MESSAGE = 40_000  # 320 KiB of doubles, plus the header


class Chunker:
    """Records gathered, in order, into pieces that each make a features message of bounded
    size, as they come: a stage sends each piece when it is full instead of holding all of its
    batch's records (a batch of 500 messages of 50 events is 25,000 records, some 60 MB at once).

    Examples
    --------
    >>> chunker = Chunker()
    >>> recs = [FeatureRecord("m", "d", f"e{i}", 0.0, {"x": 1.0}, None, 0, i) for i in range(1001)]
    >>> full = [chunker.add(record) for record in recs]
    >>> [len(piece) for piece in full if piece], len(chunker.rest()), chunker.rest()
    ([1000], 1, [])
    """

    def __init__(self) -> None:
        self._piece: list[FeatureRecord] = []
        self._values = 0

    def add(self, record: FeatureRecord) -> list[FeatureRecord] | None:
        """Take ``record``; the piece it did not fit in, full, to be sent now (else ``None``)."""
        full = None
        if self._piece and (
            len(self._piece) == MAX_RECORDS_PER_MESSAGE
            or self._values + len(record.features) > MAX_VALUES_PER_MESSAGE
        ):
            full, self._piece, self._values = self._piece, [], 0
        self._piece.append(record)
        self._values += len(record.features)
        return full

    def rest(self) -> list[FeatureRecord]:
        """The records not yet handed back (the last piece, not full), taken."""
        piece, self._piece, self._values = self._piece, [], 0
        return piece


def chunks(records: list[FeatureRecord]) -> Iterator[list[FeatureRecord]]:
    """``records`` cut, in order, into pieces that each make a features message of bounded size.

    Examples
    --------
    >>> recs = [FeatureRecord("m", "d", f"e{i}", 0.0, {"x": 1.0}, None, 0, i) for i in range(2500)]
    >>> [len(c) for c in chunks(recs)]
    [1000, 1000, 500]
    """
    chunker = Chunker()
    for record in records:
        full = chunker.add(record)
        if full:
            yield full
    rest = chunker.rest()
    if rest:
        yield rest


def decode(raw: bytes | None) -> list[Record]:
    """The records of one ``sensor-features`` message; ``ValueError`` if it is not one."""
    try:
        if not raw or not raw.startswith(MAGIC):
            raise ValueError("no features header")
        (head_len,) = _HEADER_LEN.unpack_from(raw, len(MAGIC))
        start = len(MAGIC) + _HEADER_LEN.size
        body = orjson.loads(memoryview(raw)[start : start + head_len])
        model = str(body["model"])
        source, partition = body["src"]
        if source == EVENTS:
            doubles = array("d")
            doubles.frombytes(memoryview(raw)[start + head_len :])
            if _BIG_ENDIAN:
                doubles.byteswap()
            values = doubles.tolist()
            shapes = [tuple(names) for names in body["shapes"]]
            schema = str(body.get("schema", ""))
            partition = int(partition)
            out: list[Record] = []
            at = 0
            for r in body["records"]:
                names = shapes[r["shape"]]
                end = at + len(names)
                if end > len(values):  # checked here, so the zip below needs no strict check
                    raise ValueError("fewer feature values than names")
                out.append(
                    FeatureRecord(
                        model,
                        str(r["device_id"]),
                        str(r["event_id"]),
                        float(r["ts"]),
                        dict(zip(names, values[at:end], strict=False)),
                        r.get("target"),
                        partition,
                        int(r["o"]),
                        int(r["i"]),
                        tuple(r.get("imputed", ())),
                        tuple(r.get("clipped", ())),
                        schema,
                    )
                )
                at = end
            if at != len(values):
                raise ValueError(f"{len(values) - at} feature values left over")
            return out
        if source == LABELS:
            return [
                LabelRecord(model, str(r["event_id"]), r["label"], int(partition), int(r["o"]), int(r["i"]))
                for r in body["labels"]
            ]
    except (KeyError, TypeError, ValueError, IndexError, struct.error, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a features message: {exc!r}") from exc
    raise ValueError(f"not a features message: unknown source {source!r}")
