"""gw.verdict: drops, NAT verdicts and routes share one integer space without overlapping, so one
counter list holds them all and ``if verdict:`` reads "not forwarded as it is"."""

from __future__ import annotations

from gw.verdict import DROP_COUNT, VERDICT_COUNT, Drop, Route, Verdict, name


def test_the_three_ranges_are_disjoint_and_in_their_bands() -> None:
    drops, verdicts, routes = ({int(x) for x in kind} for kind in (Drop, Verdict, Route))
    assert not drops & verdicts and not drops & routes and not verdicts & routes
    assert all(1 <= d < 32 for d in drops) and DROP_COUNT == max(drops) + 1
    assert verdicts - {0} and all(32 <= v < 40 for v in verdicts - {0}) and Verdict.FORWARD == 0
    assert all(40 <= r for r in routes) and VERDICT_COUNT == max(routes) + 1


def test_every_outcome_has_a_readable_name() -> None:
    assert name(0) == "forward" and name(Drop.MARTIAN) == "martian" and name(Route.NAT) == "nat"
    assert len({name(v) for kind in (Drop, Verdict, Route) for v in kind}) == len(Drop) + len(Verdict) + len(Route)
    assert name(999) == "999"


def test_the_router_and_nat_share_the_one_enum() -> None:
    from gw import nat, packet, router

    assert router.Route is Route and packet.Drop is Drop and nat.Verdict is Verdict
