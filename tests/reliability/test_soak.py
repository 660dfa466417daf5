"""The soak in CI size (15 s of faults every 1.2 s), and the growth verdict on synthetic series."""

from __future__ import annotations

import pytest

from exporter_tools.soak import Sample, judge, soak


def _samples(rss: list[float], fds: int = 20, tasks: int = 12, series: int = 240) -> list[Sample]:
    return [Sample(float(i), r, fds, tasks, series, True, True, "PRIMARY_ACTIVE") for i, r in enumerate(rss)]


def test_judge_passes_a_plateau_and_fails_steady_growth() -> None:
    plateau = _samples([50.0 + (i % 3) * 0.5 for i in range(40)])
    assert all(v["ok"] for v in judge(plateau, warmup=0.2).values())
    leaking = _samples([50.0 + i for i in range(40)])  # 1 MiB per sample: halves 16 MiB apart
    verdict = judge(leaking, warmup=0.2)
    assert verdict["rss_mib"]["ok"] is False
    assert verdict["fds"]["ok"] is True
    fd_leak = [Sample(float(i), 50.0, 20 + i, 12, 240, True, True, "x") for i in range(40)]
    assert judge(fd_leak, warmup=0.2)["fds"]["ok"] is False
    assert judge([], warmup=0.2) == {}


@pytest.mark.timeout(90)
@pytest.mark.looptime  # 9 s of soak on virtual loop time: the sockets and the faults are real, the waits are not
async def test_soak_smoke() -> None:
    report = await soak(9.0, fault_every=0.8, sample_every=0.25, rate=200.0)
    summary = report.summary()
    assert report.faults >= 8
    assert summary["samples"] >= 30
    assert report.failed_scrapes == 0
    assert report.accounting_errors == 0
    assert report.received > 500
    assert report.ok, summary
