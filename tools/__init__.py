"""Operator tools over the journal: gw-replay and gw-audit."""
