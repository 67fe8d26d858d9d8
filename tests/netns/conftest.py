"""The ``netns`` fixture: throwaway network namespaces, and a way to run a command or a Python function in one.

Safety: every packet a test makes stays inside namespaces created here, named ``gwt-<pid>-<n>``, and every
one is deleted when the test ends, passed or failed. The test process itself never enters them; commands
and functions run in child processes (``ip netns exec``), which are killed by their own PID when they
time out. IPv6 is switched off inside each namespace, so the kernel's link-local chatter (router
solicitations, MLD reports) never lands in a device under test.

``call(name, func, *args)`` runs a module-level function in a fresh interpreter inside the namespace and
returns its JSON-encoded result; an exception inside becomes ``NetnsCallError`` carrying the child's
traceback.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 15  # one child process; the tests inside bound their own waits to a second or two
RESULT_MARK = "\n@@gw-netns-result@@"
_serial = itertools.count()  # unique namespace names across every fixture in this process

# the child: import the function by module and name, call it with JSON args, print the JSON result
_CHILD = f"""
import importlib, json, sys
module, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
result = getattr(importlib.import_module(module), name)(*args)
sys.stdout.write({RESULT_MARK!r} + json.dumps(result))
"""


class NetnsCallError(AssertionError):
    """A command or function run inside a namespace failed; the message holds its output."""


def netns_list() -> set[str]:
    """The names of the network namespaces that exist now."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def require_netns() -> None:
    """Skip (fail when CI is set: CI runs as root and these tests must run there) without root or TUN."""
    from gw.lab.world import LabError, check_host

    try:
        check_host()
    except LabError as e:
        msg = f"netns tests: {e}"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}, and CI is set: these tests must run in CI", pytrace=False)
        pytest.skip(msg)


class Netns:
    """Namespaces created through this helper are all deleted by ``close`` (or leaving the ``with``)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        """A new, empty network namespace (only ``lo``, down; IPv6 off); returns its name."""
        name = f"gwt-{os.getpid()}-{next(_serial)}"
        self.names.append(name)  # before creating it, so that a half-made namespace is deleted too
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=5, capture_output=True)
        # /proc/sys/net is per namespace: these writes change only the new one
        self.run(
            name,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
        return name

    def run(self, name: str, *argv: str, timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace ``name``; raises NetnsCallError when it fails."""
        return self._run(name, list(argv), " ".join(argv), timeout, None)

    def _run(
        self, name: str, argv: list[str], label: str, timeout: float, env: dict[str, str] | None
    ) -> subprocess.CompletedProcess[str]:
        assert name in self.names, f"{name} was not created by this helper"
        cmd = ["ip", "netns", "exec", name, *argv]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired as e:  # subprocess.run has killed the child by its PID
            raise NetnsCallError(f"{label} in {name}: no result after {timeout} s") from e
        if proc.returncode != 0:
            raise NetnsCallError(f"{label} in {name} exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def call(self, name: str, func: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run module-level ``func(*args)`` in a fresh interpreter inside ``name``; returns its JSON result."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-c", _CHILD, func.__module__, func.__qualname__, json.dumps(args)]
        proc = self._run(name, argv, f"{func.__qualname__}{tuple(args)!r}", timeout, env)
        _, mark, result = proc.stdout.rpartition(RESULT_MARK)
        assert mark, f"{func.__qualname__} in {name} printed no result:\n{proc.stdout}{proc.stderr}"
        return json.loads(result)

    def close(self) -> None:
        """Delete every namespace this helper made; raises if one is still there afterwards."""
        left = []
        while self.names:
            name = self.names.pop()
            subprocess.run(["ip", "netns", "del", name], timeout=5, capture_output=True)
            if os.path.exists(f"/run/netns/{name}"):
                left.append(name)
        assert not left, f"network namespaces not removed: {left}"

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A ``Netns`` helper whose namespaces are removed when the test ends, however it ends."""
    require_netns()
    with Netns() as helper:
        yield helper


def lab_tag() -> str:
    """A lab tag no other lab of this process or another test run uses."""
    return f"t{os.getpid() % 100000}x{next(_serial)}"


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A built (not started) ``gw.lab.world.LabWorld`` of its own, the gateway in socket mode, taken down
    however the test ends; its processes' logs are printed at the end (pytest shows them on failure).
    The clients' TUN offloads on unless the test parametrizes it indirectly with False."""
    yield from _world(tmp_path, "socket", getattr(request, "param", True))


@pytest.fixture
def raw_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """As ``world``, the gateway in raw mode (its own public address 198.51.100.1 on the link); the
    clients' TUN offloads on unless the test parametrizes it indirectly with False."""
    yield from _world(tmp_path, "raw", getattr(request, "param", True))


def _world(tmp_path: Path, external: str, offloads: bool = True) -> Iterator[Any]:
    from gw.lab.world import LabWorld

    require_netns()
    lab = LabWorld(lab_tag(), directory=tmp_path / "lab", external=external, offloads=offloads)
    try:
        lab.build()
        yield lab
    finally:
        for record in lab.procs:
            print(f"--- {record['name']} (pid {record['pid']})\n{lab.log_tail(record['name'], 30)}")
        left = lab.down(remove_dir=False)
        assert not left, f"the lab was not removed: {left}"

