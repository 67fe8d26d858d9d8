"""Journals from real NAT traffic for the tools' tests: the generator lives in ``bench.history`` (tests may
import bench; bench never imports tests), re-exported here under the names the tests use."""

from __future__ import annotations

from bench.history import (  # noqa: F401
    EXT_ADDRS,
    NS,
    T0,
    VPN_POOL,
    History,
    fingerprint,
    generate,
    table_of,
    write_journal,
    write_with_writer,
)
