"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from bench import drift, features, ingest, learning

features.main([])
ingest.main([])
learning.main([])
drift.main([])
