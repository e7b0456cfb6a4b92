"""The API benchmark's pure helpers: percentiles, a cell's figures, the HTTP bytes it sends and
reads. (No timing is asserted.)"""

from __future__ import annotations

import random
import statistics

import pytest

from bench.api import content_length, http_request, percentile, summarize


def test_percentile_interpolates_between_ranks_like_statistics_quantiles_inclusive() -> None:
    values = [random.Random(3).uniform(0, 100) for _ in range(257)]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 50) == pytest.approx(statistics.median(values))
    assert percentile(values, 99) == pytest.approx(cuts[98])
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_a_cell_counts_answers_in_the_window_and_spreads_cpu_over_them() -> None:
    cell = summarize([0.002] * 99 + [0.1], errors=0, window=4.0, client_cpu=0.01, server_cpu=0.05)
    assert cell.rate == 25.0
    assert cell.p50_ms == pytest.approx(2.0)
    assert 2.0 < cell.p99_ms < 100.0
    assert (cell.client_cpu_us, cell.server_cpu_us) == (pytest.approx(100.0), pytest.approx(500.0))
    with pytest.raises(RuntimeError):
        summarize([], 0, 1.0, 0.0, None)


def test_requests_are_keep_alive_http_11_with_their_length() -> None:
    body = b'{"device_id": "d"}'
    raw = http_request("POST", "/predict", "127.0.0.1:8000", body)
    head, _, sent = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /predict HTTP/1.1\r\n") and b"Connection: close" not in head
    assert sent == body and f"Content-Length: {len(body)}".encode() in head
    assert b"Content-Type: application/json" in head


def test_content_length_is_read_from_any_case_of_the_header() -> None:
    assert content_length(b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\nContent-Length: 7\r\n\r\n") == 7
    with pytest.raises(ValueError):
        content_length(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
