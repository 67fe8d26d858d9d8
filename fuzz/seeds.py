"""Write the seed corpora: ``python -m fuzz.seeds [target...]`` (each harness's ``seeds()``).

Seeds are named ``seed-<sha1 of the bytes>`` so rewriting them is idempotent; inputs the fuzzers found and
``-merge=1`` kept are named by libFuzzer (a bare sha1) and are left alone.
"""

from __future__ import annotations

import hashlib
import importlib
import sys

from fuzz.targets import CORPUS, TARGETS, harness_module


def write_seeds(name: str) -> int:
    """Write ``name``'s seeds into its corpus directory; returns how many are new."""
    module = importlib.import_module(harness_module(name))
    target = CORPUS / name
    target.mkdir(parents=True, exist_ok=True)
    new = 0
    limit = TARGETS[name]["max_len"]
    for data in module.seeds():
        if len(data) > limit:
            raise ValueError(f"{name}: a seed of {len(data)} bytes is over max_len {limit}")
        path = target / f"seed-{hashlib.sha1(data).hexdigest()}"
        if not path.exists():
            path.write_bytes(data)
            new += 1
    return new


def main(argv: list[str]) -> int:
    for name in argv or list(TARGETS):
        print(f"{name}: {write_seeds(name)} new seeds in {CORPUS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
