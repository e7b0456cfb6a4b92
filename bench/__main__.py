"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from bench import ingest

ingest.main([])
