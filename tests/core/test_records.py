"""The features-hop message (DLF2): what goes in comes out, the same bytes whichever JSON library
wrote the header, and anything else is refused as not a features message."""

from __future__ import annotations

import json
import struct

import pytest

from driftline.core import records
from driftline.core.records import FeatureRecord, LabelRecord


def feature_records() -> list[FeatureRecord]:
    return [
        FeatureRecord("m", "d1", "e1", 1.7e9, {"x": 1.5, "y": -0.25}, 3.2, 2, 10, 0, ("x",), (), "s1"),
        FeatureRecord("m", "d2", "e2", 1.7e9 + 1, {"x": 2.0}, None, 2, 10, 1, (), ("x",), "s1"),
        FeatureRecord("m", "d1", "e3", 1.7e9 + 2, {"x": 1e300, "y": 5e-324}, "high", 2, 11, 0, (), (), "s1"),
        FeatureRecord("m", "d3", "e4", 1.7e9 + 3, {"x": float("inf"), "y": float("nan")}, True, 2, 12),
    ]


def test_feature_records_come_back_as_they_went() -> None:
    sent = feature_records()
    back = records.decode(records.encode("m", sent))
    assert back[:3] == sent[:3]
    # NaN equals nothing, itself included: compare it apart.
    last = back[3]
    assert last.features["x"] == float("inf") and last.features["y"] != last.features["y"]
    assert (last.event_id, last.target, last.source_offset) == ("e4", True, 12)


def test_labels_come_back_as_they_went_an_integer_label_beyond_64_bits_included() -> None:
    sent = [LabelRecord("m", "e1", 3.4, 0, 88), LabelRecord("m", "e2", 2**70, 0, 89, 1)]
    assert records.decode(records.encode("m", sent)) == sent


def test_values_travel_as_little_endian_doubles_after_a_json_header() -> None:
    raw = records.encode("m", feature_records()[:2])
    (length,) = struct.unpack_from("<I", raw, 4)
    header = json.loads(raw[8 : 8 + length])
    assert raw[:4] == b"DLF2" and header["shapes"] == [["x", "y"], ["x"]]
    assert struct.unpack("<3d", raw[8 + length :]) == (1.5, -0.25, 2.0)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"DLF1xxxx",
        b"DLF2" + struct.pack("<I", 3) + b"{no",
        b"DLF2" + struct.pack("<I", 2) + b"[]",
        # one value short of the names
        records.encode("m", feature_records()[:1])[:-8],
        # one value too many
        records.encode("m", feature_records()[:1]) + struct.pack("<d", 1.0),
    ],
)
def test_anything_else_is_not_a_features_message(raw: bytes | None) -> None:
    with pytest.raises(ValueError, match="features"):
        records.decode(raw)
