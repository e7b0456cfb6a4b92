"""``driftline worker``: the Faust worker running both stream agents."""

from __future__ import annotations

import json
import logging

import redis

from driftline.errors import ServiceUnavailable
from driftline.kafka import ensure_topics
from driftline.settings import Settings

log = logging.getLogger("driftline.worker")


def configured_models_key(settings: Settings) -> str:
    """The Redis hash where workers say which models they learn (name -> spec JSON).

    ``driftline models`` reads it to tell "configured, no snapshot yet" from "no such model".
    """
    return settings.redis_key("configured-models")


def announce_models(settings: Settings, client: redis.Redis) -> None:
    """Record the models this worker learns, before its first snapshot exists."""
    specs = {spec.name: json.dumps(spec.summary()) for spec in settings.model_specs()}
    client.hset(configured_models_key(settings), mapping=specs)  # type: ignore[arg-type]


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Say what the worker will do, create the topics if needed, then run the agents until
    SIGINT/SIGTERM."""
    for line in settings.describe():
        log.info("%s", line)
    # Faust makes its own folder in it, but not the parents.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    topic_ids = ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        announce_models(settings, client)
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnavailable("Redis", settings.redis_url, str(exc)) from exc
    finally:
        client.close()
    # Imported here: the Faust app reads settings at import, after the CLI has settled them.
    import faust

    from streams.agents import runtime
    from streams.app import app

    runtime.topic_ids = topic_ids
    log.info("topics %s", topic_ids)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
