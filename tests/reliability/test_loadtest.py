"""The load test's wrk parsing (the run itself needs wrk and ~1 minute: ``python -m exporter_tools.loadtest``)."""

from __future__ import annotations

import pytest

from exporter_tools.loadtest import parse_wrk

CLEAN = """Running 1s test @ http://127.0.0.1:18555/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.24ms    0.90ms   7.08ms   70.37%
    Req/Sec     0.87k    98.31     1.01k    70.00%
  Latency Distribution
     50%    2.20ms
     75%    2.71ms
     90%    3.30ms
     99%    4.97ms
  868 requests in 1.00s, 2.36MB read
Requests/sec:    867.30
Transfer/sec:      2.35MB
"""

TROUBLED = """Running 10s test @ http://127.0.0.1:9877/metrics
  2 threads and 50 connections
  Latency Distribution
     50%  150.00us
     99%    1.20s
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec:     41.00
"""


def test_parse_wrk_output() -> None:
    clean = parse_wrk(CLEAN)
    assert clean == {"rps": 867.30, "p99": pytest.approx(0.00497), "errors": 0, "timeouts": 0, "non_2xx": 0}
    troubled = parse_wrk(TROUBLED)
    assert troubled["p99"] == pytest.approx(1.2)
    assert (troubled["errors"], troubled["timeouts"], troubled["non_2xx"]) == (4, 7, 12)
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("wrk: command failed")
