"""URLs as messages and logs may show them: never with their secrets."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """``url`` without its password or query (where tokens ride), for messages and logs.

    >>> safe_url("redis://:s3cret@db:6379/0"), safe_url("redis://127.0.0.1:6379/0")
    ('redis://:***@db:6379/0', 'redis://127.0.0.1:6379/0')
    >>> safe_url("https://hooks.example/alert?token=abc"), safe_url("127.0.0.1:9092")
    ('https://hooks.example/alert?***', '127.0.0.1:9092')
    """
    parts = urlsplit(url)
    if parts.password is None and not parts.query:
        return url
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        parts = parts._replace(netloc=f"{user}:***@{host}" + (f":{parts.port}" if parts.port else ""))
    if parts.query:
        parts = parts._replace(query="***")
    return urlunsplit(parts)
