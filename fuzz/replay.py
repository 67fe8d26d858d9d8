"""Run inputs through a harness once, without libFuzzer: ``python -m fuzz.replay NAME FILE...``.

Prints one JSON object per file: ``{"file": ..., "crash": null}`` or the exception's type, message and
traceback. Known open bugs are not let through here (this is ``FUZZ_STRICT`` by construction): the CI
test replays ``fuzz/crashes/<name>/`` with it to see which reported bugs are still open.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path

from fuzz.targets import harness_module


def replay(name: str, files: list[str]) -> list[dict]:
    module = importlib.import_module(harness_module(name))
    results = []
    for file in files:
        data = Path(file).read_bytes()
        try:
            module.one_input(data)
            results.append({"file": file, "crash": None})
        except Exception as exc:
            results.append({"file": file, "crash": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()})  # fmt: skip
    return results


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    for result in replay(argv[0], argv[1:]):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
