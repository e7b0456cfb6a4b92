"""driftline: live sensor readings in, self-correcting online predictions out.

Start reading at ``docs/design.md`` (the layers, the data flow, the exactly-once protocol, the
Redis key layout), then :mod:`driftline.cli` (the ``driftline`` command). The layers, bottom up:
:mod:`driftline.core` (errors, the features-hop records, Redis keys, snapshot metadata) ←
:mod:`driftline.models` (learning) ← :mod:`driftline.streams` (the stream stages, and the Faust
wiring built from plain values) ← :mod:`driftline.settings`, :mod:`driftline.api`, the CLI.

Importing this package imports nothing else: the layers below never pay for the ones above.
"""

__version__ = "0.1.0"
