"""``gw serve`` facing an operator's mistakes: one line naming the setting and the fix, no traceback, and
nothing left behind (a start that failed is journaled as such). Runs without root: no host TUN."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from gw import identity
from journal import recovery
from journal.events import GatewayStarted, GatewayStopped

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, listen: str) -> Path:
    me = identity.new_identity("gateway", tmp / "keys")
    path = tmp / "gateway.toml"
    path.write_text(f"""
[tunnel]
listen = "{listen}"
certificate = "{me.cert_path}"
key = "{me.key_path}"
[vpn]
host_device = ""
[dns]
enabled = false
[journal]
directory = "{tmp / "journal"}"
[status]
socket = "{tmp / "gw.sock"}"
""")
    return path


def _serve(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gw", "serve", "-c", str(config)], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)  # fmt: skip


def test_a_listen_address_in_use_is_one_line_exit_1_and_the_failed_start_is_journaled(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(_config(tmp_path, f"127.0.0.1:{port}"))
    assert done.returncode == 1, done.stderr
    assert f'[tunnel] listen = "127.0.0.1:{port}": address already in use' in done.stderr
    assert "Traceback" not in done.stderr
    events = recovery.load(tmp_path / "journal", truncate_torn_tail=False).events
    assert [type(e) for e in events] == [GatewayStarted, GatewayStopped] and events[-1].reason == "start failed"
    assert not (tmp_path / "gw.sock").exists()


def test_a_bad_configuration_is_exit_2_naming_file_key_and_fix(tmp_path):
    config = _config(tmp_path, "127.0.0.1:8443")
    config.write_text(config.read_text() + '[metrics]\nlisten = "0.0.0.0:9108"\n')
    done = _serve(config)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f'{config}: [metrics] listen = "0.0.0.0:9108"' in done.stderr and "public = true" in done.stderr
