"""The stream stages: where readings become feature records, and the worker that runs them.

Start reading at :mod:`~driftline.streams.ingest` (one message in, feature records or a rejection
out) and the pure logic it calls: :mod:`~driftline.streams.schema` (the event contract),
:mod:`~driftline.streams.cleaning`, :mod:`~driftline.streams.features`. The exactly-once batch
protocol is :mod:`~driftline.streams.batches`; :mod:`~driftline.streams.checkpoint` keeps state and
offsets in Redis together; :mod:`~driftline.streams.agents` wires all of it to Faust, built from a
:class:`~driftline.streams.config.WorkerConfig` of plain values. Importing this package creates no
Faust app. See docs/design.md.
"""

from driftline.core.records import FeatureRecord, LabelRecord
from driftline.streams.cleaning import Rejection, decode_event
from driftline.streams.features import DeviceState, featurize
from driftline.streams.ingest import IngestStage
from driftline.streams.schema import Reading, SensorEvent

__all__ = [
    "DeviceState",
    "FeatureRecord",
    "IngestStage",
    "LabelRecord",
    "Reading",
    "Rejection",
    "SensorEvent",
    "decode_event",
    "featurize",
]
