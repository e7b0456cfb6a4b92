"""The HTTP API: predictions, models, health. Start at :func:`api.main.create_app`."""

from api.main import create_app

__all__ = ["create_app"]
