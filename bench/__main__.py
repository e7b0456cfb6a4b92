"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from bench import features, ingest

features.main([])
ingest.main([])
