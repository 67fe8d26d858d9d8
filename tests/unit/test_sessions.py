"""gw.sessions: who gets a session, with which address, and that every decision is journaled."""

from __future__ import annotations

from gw import config, inet
from gw.nat import Nat
from gw.sessions import SessionDirectory
from gw.transport import wire
from journal.events import SessionOpened, SessionRefused

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
FP = {n: (c * 64) for n, c in (("alice", "a"), ("bob", "b"), ("carol", "c"), ("mallory", "d"))}
PEER = ("192.0.2.7", 50000)


def _config(subnet: str = "10.66.77.0/24") -> config.GatewayConfig:
    return config.parse(
        f"""
[vpn]
subnet = "{subnet}"
gateway_address = "{subnet.rsplit(".", 1)[0]}.1"
[[clients]]
name = "alice"
fingerprint = "{FP["alice"]}"
[[clients]]
name = "bob"
fingerprint = "{FP["bob"]}"
address = "{subnet.rsplit(".", 1)[0]}.2"
[[clients]]
name = "carol"
fingerprint = "{FP["carol"]}"
revoked = true
"""
    )


def _events(nat: Nat, kind: type) -> list:
    return [e for e in nat.events if type(e) is kind]


def test_a_known_client_is_welcomed_and_its_session_journaled():
    nat = Nat(_config().nat)
    d = SessionDirectory(_config(), nat)
    w = d.authorize(FP["alice"], PEER, T0)
    assert isinstance(w, wire.Welcome) and w.prefix_len == 24 and w.gateway_addr == "10.66.77.1"
    [opened] = _events(nat, SessionOpened)
    assert (opened.client, opened.fingerprint, inet.ntoa(opened.vpn_addr)) == (
        "alice",
        FP["alice"],
        w.vpn_addr,
    )
    assert (opened.remote_addr, opened.remote_port, opened.session) == (*PEER, w.session)


def test_unknown_and_revoked_identities_are_refused_and_the_refusals_journaled_with_the_fingerprint():
    nat = Nat(_config().nat)
    d = SessionDirectory(_config(), nat)
    assert d.authorize(FP["mallory"], PEER, T0) == wire.Refusal(
        "unknown", "no [[clients]] entry has this fingerprint"
    )
    assert d.authorize(FP["carol"], PEER, T0).code == "revoked"
    refused = _events(nat, SessionRefused)
    assert [(e.fingerprint, e.reason, e.client) for e in refused] == [
        (FP["mallory"], "unknown", ""),
        (FP["carol"], "revoked", "carol"),
    ]
    assert _events(nat, SessionOpened) == []


def test_a_client_gets_its_fixed_address_or_the_same_pool_address_on_every_reconnect_and_restart():
    cfg = _config()
    nat = Nat(cfg.nat)
    d = SessionDirectory(cfg, nat)
    bob = d.authorize(FP["bob"], PEER, T0)
    assert bob.vpn_addr == "10.66.77.2"
    first = d.authorize(FP["alice"], PEER, T0)
    nat.close_session(T0 + NS, first.session, "client_left")
    again = d.authorize(FP["alice"], PEER, T0 + 2 * NS)
    assert again.vpn_addr == first.vpn_addr and again.session > first.session
    # the gateway restarts: a new directory over the NAT folded from the journal
    restored = Nat.restore(cfg.nat, None, nat.events)
    after = SessionDirectory(cfg, restored).authorize(FP["alice"], PEER, T0 + 3 * NS)
    assert after.vpn_addr == first.vpn_addr and after.session > again.session


def test_an_address_held_by_another_client_is_skipped_and_a_full_pool_refuses():
    cfg = _config("10.66.77.0/29")  # hosts .1-.6: gateway .1, bob fixed .2, pool .3-.6
    nat = Nat(cfg.nat)
    d = SessionDirectory(cfg, nat)
    pool = {f"10.66.77.{i}" for i in range(3, 7)}
    for i in range(4):  # four sessions of others hold the whole pool
        nat.open_session(T0, session=100 + i, client=f"other{i}", vpn_addr=inet.aton(f"10.66.77.{3 + i}"))
    refused = d.authorize(FP["alice"], PEER, T0)
    assert refused.code == "pool_empty" and _events(nat, SessionRefused)[-1].client == "alice"
    nat.close_session(T0, 102, "client_left")
    assert d.authorize(FP["alice"], PEER, T0).vpn_addr == "10.66.77.5" and "10.66.77.5" in pool


def test_the_pool_skips_the_gateway_and_fixed_addresses_in_order():
    """The implicit pool is the eager list it replaced: every host but the gateway's and the fixed ones."""
    directory = SessionDirectory(_config("10.9.0.0/28"), Nat(config.parse("").nat))
    gateway, fixed = inet.aton("10.9.0.1"), inet.aton("10.9.0.2")
    eager = [a for a in range(inet.aton("10.9.0.1"), inet.aton("10.9.0.15")) if a not in (gateway, fixed)]
    assert directory._pool_size == len(eager) == 12
    assert [directory._pool_address(i) for i in range(len(eager))] == eager


def test_a_slash_8_subnet_costs_nothing_until_clients_come():
    """A /8 pool is not built at start (it was a list of 16 million addresses); a client still gets one."""
    nat = Nat(config.parse("").nat)
    directory = SessionDirectory(_config("10.0.0.0/8"), nat)
    assert directory._pool_size == 2**24 - 2 - 2
    welcome = directory.authorize(FP["alice"], PEER, T0)
    assert isinstance(welcome, wire.Welcome)
    assert inet.parse_prefix("10.0.0.0/8")[0] < inet.aton(welcome.vpn_addr) < inet.aton("10.255.255.255")
    assert welcome.vpn_addr not in ("10.0.0.1", "10.0.0.2")
