"""Run the fuzzers: ``python -m fuzz.run [--runs N | --time S] [--merge] [--minimize] [target...]``.

``just fuzz`` runs every target for 10**6 inputs, one after another (each harness is one process on one
core), merges the inputs that found new coverage into ``fuzz/corpus/<name>/`` (libFuzzer ``-merge=1``:
only inputs that add coverage are kept) and prints a table: inputs run, executions per second, crashes,
peak RSS and the RSS after a tenth of the run and at its end (libFuzzer's own counters; fresh state per
input means it should stay flat). A crash's input is written to ``fuzz/crashes/<name>/`` with its traceback in
``<input>.txt``; the run of that target stops there (the next targets still run) and the exit status is 1.

``--minimize`` rewrites each corpus as the smallest set of its files that keeps its coverage (a merge
into an empty directory), to keep the corpora small; ``seed-*`` and ``crash-*`` files always stay.
Logs go to ``fuzz/.work/<name>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

from fuzz.targets import CORPUS, CRASHES, FUZZ_DIR, REPO, TARGETS, harness_module, libfuzzer_args

WORK = FUZZ_DIR / ".work"
RSS_LIMIT_MB = 2048  # libFuzzer's default: an input that takes more is reported as out-of-memory
TIMEOUT_S = 10  # one input slower than this is reported as a hang

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s.*?exec/s: (\d+) rss: (\d+)Mb", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


def command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", harness_module(name), *libfuzzer_args(name), *args]


def run_target(name: str, runs: int | None, seconds: int | None, merge: bool) -> dict:
    """One long run of ``name``; its figures."""
    new = WORK / name / "new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    crashes = CRASHES / name
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    log = WORK / f"{name}.log"
    limits = [f"-runs={runs}"] if runs else []
    if seconds:
        limits.append(f"-max_total_time={seconds}")
    cmd = command(name, str(new), str(CORPUS / name), *limits, f"-artifact_prefix={crashes}/",
                  f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={TIMEOUT_S}", "-print_final_stats=1")  # fmt: skip
    started = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    status = [(int(n), kind, int(e), int(r)) for n, kind, e, r in _STATUS.findall(text)]
    inputs = stats.get("number_of_executed_units", status[-1][0] if status else 0)
    warm = [s for s in status if s[0] >= inputs // 10]  # after the first tenth: the corpus has grown in
    crashes.mkdir(parents=True, exist_ok=True)
    found = sorted(set(crashes.iterdir()) - before)
    for crash in found:
        if crash.suffix != ".txt":
            crash.with_name(crash.name + ".txt").write_text(traceback_of(text))
    result = {
        "target": name,
        "inputs": inputs,
        "exec_per_s": stats.get("average_exec_per_sec", 0),
        "seconds": round(elapsed),
        "crashes": len([c for c in found if c.suffix != ".txt"]),
        "exit": rc,
        "peak_rss_mb": stats.get("peak_rss_mb", max((s[3] for s in status), default=0)),
        "rss_first_mb": warm[0][3] if warm else None,  # RSS after a tenth of the run ...
        "rss_last_mb": status[-1][3] if status else None,  # ... and at its end: flat means bounded
        "known_bug_hits": "known open bug hit" in text,
    }
    if merge and rc == 0:
        subprocess.call(command(name, "-merge=1", str(CORPUS / name), str(new)), cwd=REPO,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    result["corpus_files"] = len(list((CORPUS / name).iterdir()))
    return result


def traceback_of(text: str) -> str:
    """The Python traceback atheris printed for a crash (the log from ``=== Uncaught`` on)."""
    at = text.find("=== Uncaught Python exception")
    return text[at:] if at >= 0 else text[-4000:]


def minimize(name: str) -> tuple[int, int]:
    """Rewrite ``name``'s corpus as a minimal set with the same coverage; (files before, after)."""
    corpus = CORPUS / name
    fresh = WORK / name / "minimized"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    before = len(list(corpus.iterdir()))
    subprocess.check_call(command(name, "-merge=1", str(fresh), str(corpus)), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for path in corpus.iterdir():
        # hand-made seeds stay (they document the inputs' layout), and so do the reproducers of fixed bugs
        if not path.name.startswith(("seed-", "crash-")):
            path.unlink()
    for path in fresh.iterdir():  # libFuzzer names a file by its sha1, as the seeds are named
        if not (corpus / path.name).exists() and not (corpus / f"seed-{path.name}").exists():
            shutil.copy(path, corpus / path.name)
    return before, len(list(corpus.iterdir()))


def table(results: list[dict]) -> str:
    head = "| target | inputs | exec/s | time s | crashes | peak RSS MB | RSS at 10% -> end MB | corpus |"
    rows = [head, "|" + "---|" * 8]
    for r in results:
        rss = f"{r['rss_first_mb']} -> {r['rss_last_mb']}"
        rows.append(f"| {r['target']} | {r['inputs']:,} | {r['exec_per_s']:,} | {r['seconds']} | {r['crashes']} "
                    f"| {r['peak_rss_mb']} | {rss} | {r['corpus_files']} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", metavar="target", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target (0: no limit)")
    parser.add_argument("--time", type=int, default=0, help="seconds per target (0: no limit)")
    parser.add_argument("--merge", action="store_true", help="merge new coverage into fuzz/corpus/")
    parser.add_argument("--minimize", action="store_true", help="only minimize the corpora, run nothing")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: the targets are {', '.join(TARGETS)}")
    WORK.mkdir(exist_ok=True)
    if args.minimize:
        for name in names:
            before, after = minimize(name)
            print(f"{name}: {before} -> {after} files")
        return 0
    results = []
    for name in names:
        print(f"fuzzing {name} ({args.runs or 'unlimited'} inputs{f', {args.time} s' if args.time else ''}); "
              f"log: {WORK / name}.log", flush=True)  # fmt: skip
        results.append(run_target(name, args.runs or None, args.time or None, args.merge))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    (WORK / "results.json").write_text(json.dumps(results, indent=1))
    return 1 if any(r["crashes"] or r["exit"] for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
