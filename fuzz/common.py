"""What the harnesses share: instrumentation, the record framing of multi-message inputs, the main loop.

Theory of operation
-------------------
Each harness (``fuzz/fuzz_<name>.py``) imports the code under test inside ``instrumented()`` so that
atheris adds coverage feedback to gw's and the journal's Python bytecode (the compiled fast path,
``gw/_fastpath``, runs but gives no coverage), then calls ``fuzz(name, one_input)``.

``one_input(data)`` drives one entry point the way the daemon's shell does, through the sans-I/O cores
only (no socket, no device, no clock: ``now`` is part of the input), and returns normally when every
input got a verdict or one of the entry point's *documented* errors (caught by the harness, by name).
Any other exception escapes, and libFuzzer saves the input as a crash. A harness also checks the
cheap invariants the docstrings promise (a forwarded packet has a sound header, a DNS reply is never
longer than its query...) with ``require``, whose failure is a crash too.

Inputs that carry a sequence of messages (packets, DNS datagrams, ARP messages) use one framing,
friendly to mutation and to hand-made seeds: a header byte, then records ``[kind u8][length u16 BE]
[bytes]``; a record cut short by the end of the input takes what is left (``records``).

Open bugs: a crash that is reported and not fixed yet would stop every run at once. ``fuzz.known``
lists them (exception type and the gw/journal function that raised it); ``fuzz`` lets such an
exception pass as a verdict and counts it, unless ``FUZZ_STRICT=1``. Their reproducers live in
``fuzz/crashes/<name>/`` and the CI test replays them strictly, expecting them to fail until fixed.
Memory: every harness builds fresh state per input, so a run's RSS must stay flat; ``fuzz.run``
reports the peak and the growth from libFuzzer's own counters.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import atheris

from fuzz import known
from fuzz.known import INSTRUMENTED

_RECORD_HEAD = struct.Struct("!BH")
STRICT = os.environ.get("FUZZ_STRICT") == "1"
known_hits: dict[str, int] = {}


class HarnessError(AssertionError):
    """An invariant the code under test promises did not hold (a crash, like any escaped exception)."""


def require(ok: object, what: str) -> None:
    """Fail the input (a crash) when ``ok`` is false."""
    if not ok:
        raise HarnessError(what)


_instrumenting = 0  # depth of nested instrumented() blocks (a harness importing another's helpers)


@contextmanager
def instrumented(*extra: str) -> Iterator[None]:
    """Import the code under test inside this: gw and journal (and ``extra`` packages) get coverage.

    Re-entrant: atheris's import hook is one per process, and leaving an inner block would remove it
    for the rest of the outer one (everything the outer block imports after it would run blind)."""
    global _instrumenting
    if _instrumenting:
        _instrumenting += 1
        try:
            yield
        finally:
            _instrumenting -= 1
        return
    _instrumenting = 1
    try:
        with atheris.instrument_imports(include=[*INSTRUMENTED, *extra]):
            yield
    finally:
        _instrumenting = 0


def records(data: bytes, start: int = 1) -> Iterator[tuple[int, bytes]]:
    """(kind, payload) records from ``data[start:]``: ``[kind u8][length u16 BE][payload]``..."""
    at, n = start, len(data)
    while at < n:
        if at + 3 > n:
            yield data[at], b""
            return
        kind, length = _RECORD_HEAD.unpack_from(data, at)
        at += 3
        yield kind, data[at : at + length]
        at += length


def record(kind: int, payload: bytes | bytearray) -> bytes:
    """One record, for building seeds."""
    return _RECORD_HEAD.pack(kind, len(payload)) + bytes(payload)


def fuzz(name: str, one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Run ``one_input`` under atheris/libFuzzer with ``argv`` (default ``sys.argv``)."""

    def guarded(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as exc:
            bug = None if STRICT else known.match(name, exc)
            if bug is None:
                raise
            if bug not in known_hits:
                print(f"[fuzz] {name}: known open bug hit ({bug}); FUZZ_STRICT=1 makes it a crash",
                      file=sys.stderr)  # fmt: skip
            known_hits[bug] = known_hits.get(bug, 0) + 1

    argv = list(sys.argv if argv is None else argv)
    # libFuzzer's -merge, -minimize_crash and -fork run argv[0] again through the shell: make it the
    # module, so that it runs like this process (the .py file itself is not executable)
    argv[0] = f"{shlex.quote(sys.executable)} -m fuzz.fuzz_{name}"
    repo = str(Path(__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "")
    if repo not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = repo + (os.pathsep + paths if paths else "")
    atheris.Setup(argv, guarded)
    atheris.Fuzz()



def scratch_dir(name: str) -> Path:
    """A private directory for harnesses whose entry point reads files (on /dev/shm when there is one).

    libFuzzer may end the process without running Python's exit handlers, so directories that dead
    processes left behind are removed here, by the pid in their name."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    for old in base.glob("gw-fuzz-*-*"):
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(old, ignore_errors=True)
    path = base / f"gw-fuzz-{name}-{os.getpid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, path, True)
    return path
