"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from bench import alerts, api, drift, features, ingest, learning, retrain, stages

features.main([])
ingest.main([])
learning.main([])
stages.main([])
drift.main([])
retrain.main([])
alerts.main([])
api.main([])
