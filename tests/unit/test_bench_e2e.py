"""bench.e2e's pure parts, without a network: iperf3's JSON, the statistics, the ratios, the report,
the gateway configuration it writes. The lab run itself is ``python -m bench.e2e`` (root)."""

from __future__ import annotations

import math
import os

import pytest

from bench import e2e
from bench.lab import check_iperf, fmt, host_cpu, retransmits, stats, tcp_mbit, udp_received_pps
from gw import config
from gw.lab.world import LabError, LabWorld

# iperf3 -J, trimmed to the fields the benchmark reads (the shapes of iperf3 3.12's output)
TCP_RUN = {
    "start": {"test_start": {"protocol": "TCP", "duration": 5}},
    "end": {
        "sum_sent": {"seconds": 5.0, "bytes": 2_500_000_000, "bits_per_second": 4.0e9, "retransmits": 3},
        "sum_received": {"seconds": 5.0, "bytes": 2_487_500_000, "bits_per_second": 3.98e9},
    },
}
UDP_RUN = {
    "start": {"test_start": {"protocol": "UDP", "blksize": 64}},
    "end": {
        "sum": {"seconds": 5.0, "bytes": 19_200_000, "bits_per_second": 3.07e7, "jitter_ms": 0.01,
                "lost_packets": 50_000, "packets": 300_000, "lost_percent": 16.7},
    },
}  # fmt: skip
REFUSED = {"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}


def test_iperf_figures() -> None:
    assert tcp_mbit(TCP_RUN) == pytest.approx(3980.0)
    assert retransmits(TCP_RUN) == 3
    assert udp_received_pps(UDP_RUN) == pytest.approx(50_000.0)  # (300,000 - 50,000) / 5 s


def test_iperf_without_retransmits_or_time() -> None:
    run = {"end": {"sum_sent": {"bits_per_second": 1.0}, "sum_received": {"bits_per_second": 1e6}}}
    assert retransmits(run) == 0
    assert udp_received_pps({"end": {"sum": {"seconds": 0, "packets": 0, "lost_packets": 0}}}) == 0.0


def test_iperf_error_is_a_lab_error() -> None:
    assert check_iperf(TCP_RUN, "up") is TCP_RUN
    with pytest.raises(LabError, match="Connection refused"):
        check_iperf(REFUSED, "up")
    with pytest.raises(LabError, match="no result"):
        check_iperf({}, "up")


def test_stats_and_fmt() -> None:
    s = stats([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["runs"]) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
    assert fmt(stats([1000.0, 2000.0, 4000.0]), "Mbit/s") == "2,000 Mbit/s (1,000-4,000)"
    assert fmt(stats([0, 1, 0]), "") == "0 (0-1)"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5], 50, 5),
        ([5], 99, 5),
        ([1, 2, 3, 4], 50, 2),  # nearest rank: ceil(4 * 0.5) = 2nd
        (list(range(1, 101)), 99, 99),
        (list(range(1, 201)), 99, 198),
        (list(range(100, 0, -1)), 50, 50),  # order does not matter
    ],
)
def test_percentile(values: list[int], q: float, expected: int) -> None:
    assert e2e.percentile(values, q) == expected


def test_latency_ms() -> None:
    assert e2e.latency_ms([1_000_000, 3_000_000, 2_000_000]) == {"median": 2.0, "p99": 3.0, "count": 3}
    empty = e2e.latency_ms([])
    assert math.isnan(empty["median"]) and empty["count"] == 0


def test_ratios() -> None:
    gw = {"tcp_up": stats([5000.0]), "tcp_down": stats([4000.0]), "udp64_pps": stats([60_000.0])}
    wg = {"tcp_up": stats([500.0]), "tcp_down": stats([0.0]), "udp64_pps": stats([20_000.0])}
    kernel = {"tcp_up": stats([20_000.0])}
    flows = {"fast": {"flows_per_s": stats([10_000.0]), "new_median_ms": stats([0.3])},
             "strict": {"flows_per_s": stats([5_000.0]), "new_median_ms": stats([3.0])}}  # fmt: skip
    found = e2e.ratios({"gw": gw, "wireguard-go": wg, "kernel": kernel, "flows": flows})
    assert found["gw_over_wireguard_go_tcp_up"] == pytest.approx(10.0)
    assert "gw_over_wireguard_go_tcp_down" not in found  # a zero divisor gives no ratio
    assert found["gw_over_wireguard_go_udp64_pps"] == pytest.approx(3.0)
    assert found["gw_over_kernel_tcp_up"] == pytest.approx(0.25)
    assert "gw_over_kernel_tcp_down" not in found
    assert found["strict_over_fast_flows_per_s"] == pytest.approx(0.5)
    assert found["strict_over_fast_new_median_ms"] == pytest.approx(10.0)
    assert e2e.ratios({"gw": gw}) == {}  # nothing to compare with (--only gw)


def test_report_lists_every_system_and_mode() -> None:
    fig = {k: stats([1.0, 2.0]) for k in ("tcp_up", "tcp_down", "udp64_pps", "rtt_ms", "cpu_s_per_gbit",
                                          "tcp_retransmits")}  # fmt: skip
    flow = {k: stats([1.0]) for k in (*e2e.FLOW_KEYS, "lost")}
    results = {"gw": fig, "wireguard-go": fig, "kernel": fig, "flows": {"fast": flow, "strict": flow}}
    text = "\n".join(e2e.report(results, e2e.ratios(results)))
    assert "gw (raw NAT)" in text and "wireguard-go" in text and "kernel" in text
    assert "audit = strict" in text and "1.00x" in text
    assert e2e.report({}, {}) == []


def test_render_aligns_columns() -> None:
    lines = e2e.render(["a", "bb"], [["long name", "1"], ["x", "22"]])
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("long name") and lines[3].endswith("22")


def test_concerns() -> None:
    good = {"tcp_up": stats([4000.0]), "tcp_down": stats([4000.0]), "tcp_retransmits": stats([0, 0]),
            "status": {"external": {"send_failed": 0}, "drops": {}}}  # fmt: skip
    assert e2e.concerns(good) == []
    bad = {"tcp_up": stats([800.0]), "tcp_retransmits": stats([0, 12]),
           "status": {"external": {"send_failed": 4}, "drops": {"no_mapping": 2}}}  # fmt: skip
    notes = e2e.concerns(bad)
    assert any("below 1 Gbit/s" in n for n in notes)
    assert any("retransmissions" in n for n in notes)
    assert "external.send_failed = 4" in notes
    assert any("no_mapping" in n for n in notes)


def test_status_summary_keeps_counters() -> None:
    doc = {"external": {"mode": "raw", "send_failed": 1}, "drops": {"no_mapping": 0, "quota": 2},
           "counts": {"segmented": 5, "to_host": 0}, "audit": {"mode": "strict", "held": 7},
           "journal": {"last_seq": 9, "durable_seq": 8, "lag_events": 1, "error": "", "directory": "/x"}}  # fmt: skip
    s = e2e.status_summary(doc)
    assert s["drops"] == {"quota": 2} and s["counts"] == {"segmented": 5}
    assert s["external"]["send_failed"] == 1 and s["audit"]["held"] == 7
    assert s["journal"] == {"last_seq": 9, "durable_seq": 8, "lag_events": 1, "error": ""}


@pytest.mark.parametrize("audit", e2e.AUDIT_MODES)
def test_gateway_config_is_a_valid_gateway_toml(tmp_path, audit: str) -> None:
    world = LabWorld("unit", tmp_path, external="raw")
    world._write_configs()  # the lab's own file, so that a change of its shape shows here
    text = e2e.gateway_config(world.gateway_toml.read_text(), tmp_path / "journal-x", audit)
    cfg = config.parse(text)
    assert cfg.journal.audit == audit
    assert cfg.journal.directory == str(tmp_path / "journal-x")
    assert cfg.nat.max_mappings_per_client == cfg.nat.max_remotes_per_client == e2e.FLOW_QUOTA
    assert cfg.external.mode == "raw" and cfg.nat.external_addresses == ["198.51.100.1"]


def test_gateway_config_refuses_an_unknown_shape() -> None:
    with pytest.raises(LabError):
        e2e.gateway_config('[tunnel]\nlisten = "0.0.0.0:8443"\n', "/tmp/j", "fast")


def test_socket_config_is_the_labs_socket_mode_gateway(tmp_path) -> None:
    """The bench's socket-mode file says what ``LabWorld(external="socket")`` says, journal aside."""
    raw = LabWorld("unit", tmp_path / "raw", external="raw")
    raw._write_configs()
    made = config.parse(e2e.socket_config(raw.gateway_toml.read_text(), tmp_path / "journal-s"))
    lab = LabWorld("unit", tmp_path / "socket", external="socket")
    lab._write_configs()
    wanted = config.parse(lab.gateway_toml.read_text())
    assert made.external == wanted.external and made.nat.external_addresses == wanted.nat.external_addresses
    assert made.journal.directory == str(tmp_path / "journal-s")
    with pytest.raises(LabError):
        e2e.socket_config('[tunnel]\nlisten = "0.0.0.0:8443"\n', tmp_path / "j")


def test_paired_ratio_is_the_median_of_the_run_by_run_ratios() -> None:
    """A host twice as slow in the last rounds slows both systems alike: the pairs keep the ratio."""
    gw = stats([2000.0, 2000.0, 1000.0, 1000.0, 1000.0])
    anchor = stats([1000.0, 1000.0, 500.0, 500.0, 500.0])
    assert e2e.paired_ratio(gw, anchor) == 2.0
    assert e2e.ratio(gw, anchor) == 2.0  # here the medians agree; with a drift between systems they do not
    drifted = stats([4000.0, 4000.0, 4000.0, 500.0, 500.0])  # measured while the host was fast, then slow
    gw_same_time = stats([2000.0, 2000.0, 2000.0, 250.0, 250.0])
    assert e2e.paired_ratio(gw_same_time, drifted) == 0.5
    assert e2e.paired_ratio(gw, stats([1.0, 2.0])) == e2e.ratio(gw, stats([1.0, 2.0]))  # unpaired: medians


def test_host_cpu_counts_busy_and_stolen_time_within_all_time() -> None:
    busy, steal, total = host_cpu()
    sum(range(2_000_000))  # some work of our own, so busy time moves
    later = host_cpu()
    assert 0 <= busy <= total and 0 <= steal <= total and busy + steal <= total
    assert all(b >= a for a, b in zip((busy, steal, total), later)) and later[2] > total


def test_the_socket_report_shows_the_host_s_cpu_per_gbit_and_its_ratio() -> None:
    def system(down: float, host_down: float) -> dict:
        keys = {"tcp_up": 1000.0, "tcp_down": down, "cpu_s_per_gbit": 0.5, "host_s_per_gbit_up": 0.4,
                "host_s_per_gbit_down": host_down, "tcp_retransmits": 0.0, "steal_share": 0.01}  # fmt: skip
        return {k: stats([v]) for k, v in keys.items()}

    results = {"gw-socket": system(3000.0, 0.6), "slirp4netns": system(4000.0, 0.3), "pasta": system(8000.0, 0.2)}
    found = e2e.ratios(results)
    assert found["gw_socket_over_slirp4netns_host_s_per_gbit_down"] == pytest.approx(2.0)
    text = "\n".join(e2e.report(results, found))
    assert "host CPU per Gbit down" in text and "0.60 s" in text and "2.00x" in text and "3.00x" in text
    cores = os.cpu_count()
    assert f"gw-socket {cores / 0.6:,.1f} Gbit/s, slirp4netns {cores / 0.3:,.1f} Gbit/s" in text


def test_socket_target_needs_every_ratio_and_each_floor() -> None:
    found = {f"gw_socket_over_{name}_{key}": 1.0 for name in e2e.ANCHORS for key in ("tcp_up", "tcp_down")}
    assert e2e.socket_target(found)["met"] is True
    found["gw_socket_over_pasta_tcp_down"] = 0.49  # under half of pasta's
    target = e2e.socket_target(found)
    assert target["met"] is False and not target["checks"]["pasta_tcp_down"]["met"]
    found["gw_socket_over_pasta_tcp_down"] = 0.5
    found["gw_socket_over_slirp4netns_tcp_up"] = 0.99  # under slirp4netns's
    assert e2e.socket_target(found)["met"] is False
    del found["gw_socket_over_slirp4netns_tcp_up"]
    assert e2e.socket_target(found) is None  # an anchor not measured: no verdict


def test_flow_client_is_hidden_from_help(capsys) -> None:
    with pytest.raises(SystemExit):
        e2e.main(["--help"])
    assert "--flow-client" not in capsys.readouterr().out
