"""``driftline worker``: the Faust worker running both stream agents."""

from __future__ import annotations

import logging

from driftline.kafka import ensure_topics
from driftline.settings import Settings


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics if needed, then run the agents until SIGINT/SIGTERM."""
    topic_ids = ensure_topics(settings)
    # Imported here: the Faust app reads settings at import, after the CLI has settled them.
    import faust

    from streams.agents import runtime
    from streams.app import app

    runtime.topic_ids = topic_ids
    logging.getLogger("driftline").info("topics %s", topic_ids)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
