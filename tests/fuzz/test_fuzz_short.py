"""A short run of every fuzz harness (``fuzz/``), the CI half of issue 13's "Hostile input".

Each harness runs as ``python -m fuzz.fuzz_<name>`` for ``SECONDS`` (its seed corpus first, then
mutations from a fixed seed), in a subprocess so a crash, a hang or a blown memory limit is the
harness's exit status: any of them fails the test, with the traceback atheris printed. New inputs go
to a temporary directory; ``fuzz/corpus/`` is only read. ``just fuzz`` runs the long version.

Open bugs the fuzzers found (``fuzz/known.py``) pass as verdicts in these runs; their reproducers in
``fuzz/crashes/<name>/`` are replayed strictly and expected to crash (xfail). Once one stops crashing
the test fails and says what to do: the bug is fixed, so its entry goes and its input joins the corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fuzz.known import KNOWN
from fuzz.targets import CORPUS, CRASHES, REPO, TARGETS, harness_module, libfuzzer_args

pytest.importorskip("atheris", reason="atheris is in the dev extras: pip install -e '.[dev]'")

SECONDS = 2  # of mutation per target, after its corpus: 12 targets stay well under a minute in all
RUNS = 500_000  # a cap, for the fast targets
WALL_S = 60  # a harness that has not exited by then is hung


def env() -> dict:
    e = dict(os.environ)
    e.pop("FUZZ_STRICT", None)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_short_fuzz_run_finds_no_crash(name, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    cmd = [sys.executable, "-m", harness_module(name), *libfuzzer_args(name), str(new), str(CORPUS / name),
           f"-max_total_time={SECONDS}", f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/",
           "-rss_limit_mb=1024", "-timeout=10", "-print_final_stats=1"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=WALL_S)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    if done.returncode or crashes:
        log = done.stdout + done.stderr
        at = log.find("=== Uncaught Python exception")
        pytest.fail(f"fuzz_{name} found a crash (exit {done.returncode}, saved {crashes}); keep the input in "
                    f"fuzz/crashes/{name}/ and report it:\n{log[at:] if at >= 0 else log[-3000:]}")  # fmt: skip
    assert "stat::number_of_executed_units" in done.stderr + done.stdout


def reproducers(name: str) -> list[str]:
    folder = CRASHES / name
    return sorted(str(p) for p in folder.iterdir() if p.suffix != ".txt") if folder.is_dir() else []


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_reported_crashes_still_reproduce(name):
    """Every open bug in fuzz/known.py has a reproducer that still crashes (xfail), and every reproducer
    an open bug: a target with neither passes."""
    files = reproducers(name)
    if not files:
        assert not KNOWN.get(name), f"fuzz/known.py lists {name} bugs with no reproducer in fuzz/crashes/{name}/"
        return
    cmd = [sys.executable, "-m", "fuzz.replay", name, *files]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=WALL_S)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(files)
    fixed = [r["file"] for r in results if r["crash"] is None]
    if fixed:
        pytest.fail(f"no longer crashing: {fixed}. The bug is fixed: remove its entry from fuzz/known.py and "
                    f"move the file into fuzz/corpus/{name}/ (it then guards against the bug coming back)")  # fmt: skip
    pytest.xfail("open bugs: " + "; ".join(sorted({r["crash"].split("\n")[0][:160] for r in results})))
