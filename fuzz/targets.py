"""The fuzz targets and their libFuzzer settings, shared by ``fuzz.run`` (``just fuzz``) and the CI test.

No imports beyond the standard library: the pytest side reads this without loading atheris.

Each target is ``fuzz/fuzz_<name>.py`` (run as ``python -m fuzz.fuzz_<name> [libFuzzer args]``) with its
seed corpus in ``fuzz/corpus/<name>/`` and the reproducers of open bugs in ``fuzz/crashes/<name>/``.
``max_len`` bounds one input: big enough for the entry point's largest meaningful input that a mutation
can still explore (a few packets, a frame batch, a small journal segment), small enough to keep
executions fast. ``dict`` names a libFuzzer dictionary under ``fuzz/dicts/``.
"""

from __future__ import annotations

from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
CORPUS = FUZZ_DIR / "corpus"
CRASHES = FUZZ_DIR / "crashes"
DICTS = FUZZ_DIR / "dicts"

# name -> settings; the entry points of issue 13 "Hostile input", in the order of the brief
TARGETS: dict[str, dict] = {
    "client_packets": {"max_len": 4096},  # Router.route_from_client -> Nat.translate_outbound (+ vnet)
    "internet_packets": {"max_len": 4096},  # Nat.translate_inbound (+ vnet) -> Router.route_to_client
    "tunnel_handshake": {"max_len": 4096},  # FrameReader + GatewayHandshake/ClientHandshake before auth
    "tunnel_frames": {"max_len": 8192},  # FrameReader + split_packets/decode_message after auth
    "dns": {"max_len": 2048},  # DnsProxy.query / answer / expire
    "journal_frames": {"max_len": 4096},  # journal.frames.decode_header / decode_frame
    "journal_segments": {"max_len": 8192},  # SegmentReader, Journal, recovery.load, build_index
    "snapshot": {"max_len": 8192},  # journal.segments.decode_snapshot -> Nat.restore
    "index": {"max_len": 2048},  # journal.index.decode_index
    "config": {"max_len": 4096, "dict": "toml.dict"},  # gw.config.parse / parse_client / load
    "link": {"max_len": 1024},  # gw.external.link.Link.on_arp / poll
    "icmp_errors": {"max_len": 2048},  # decode_extended_err -> build_offender_error -> translate_inbound
}


def harness_module(name: str) -> str:
    """The module to run with ``python -m``."""
    return f"fuzz.fuzz_{name}"


def libfuzzer_args(name: str) -> list[str]:
    """The settings every run of ``name`` uses (max_len, dictionary)."""
    spec = TARGETS[name]
    args = [f"-max_len={spec['max_len']}"]
    if "dict" in spec:
        args.append(f"-dict={DICTS / spec['dict']}")
    return args
