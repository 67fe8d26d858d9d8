"""Crash survival in CI: ``bench.crash`` with a few kills (the benchmark runs 20). The gateway is SIGKILLed
under load (steady UDP flows, new flows, HTTP downloads from both clients' side) and restarted; every
check of the benchmark must pass: same VPN addresses, every steady flow on its public endpoint,
downloads whole, no endpoint to the other client, every endpoint the internet saw in the journal
(strict), gw-audit right before, across and after."""

from __future__ import annotations

import pytest

from bench.crash import run
from tests.netns.conftest import lab_tag, require_netns

pytestmark = pytest.mark.netns


def test_three_kill_9s_under_load_lose_nothing_the_journal_promises(tmp_path):
    require_netns()
    report = run(kills=3, audit="strict", download_mb=200, seed=1, tag=lab_tag(), directory=tmp_path / "lab",
                 progress=print)  # fmt: skip
    failed = [f"{c['check']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    assert not failed, failed
    f = report["figures"]
    assert f["never_recovered"] == 0 and f["recovery_s"]["max"] < 5
    assert f["steady_flows_survived"] == f["steady_flows"] == 16
    assert f["downloads_spanning_a_crash"] >= 1
