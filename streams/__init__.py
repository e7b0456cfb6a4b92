"""The stream stages: where readings become feature records.

Start reading at :mod:`streams.agents` (the Faust agents, thin) and the pure logic they call:
:mod:`streams.schema` (the event contract), :mod:`streams.cleaning`, :mod:`streams.features` and
:mod:`streams.ingest`; :mod:`streams.records` is what the learn stage receives.
:mod:`streams.checkpoint` keeps state and offsets in Redis together.
Importing this package does not create the Faust app; :mod:`streams.app` does.
"""

from streams.cleaning import Rejection, decode_event
from streams.features import DeviceState, featurize
from streams.ingest import IngestStage
from streams.records import FeatureRecord, LabelRecord
from streams.schema import Reading, SensorEvent

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
