"""The HTTP API: predictions, models, health. Start at :func:`driftline.api.main.create_app`."""

from driftline.api.main import create_app

__all__ = ["create_app"]
