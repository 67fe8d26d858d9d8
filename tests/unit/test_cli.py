"""gw's command line: the demo runs the cores end to end; user mistakes are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gw.cli import main


def test_demo_recovers_the_same_table_after_a_crash_and_the_audit_names_the_client(capsys, tmp_path) -> None:
    journal = tmp_path / "journal"
    assert main(["demo", "--quiet", "--journal", str(journal)]) == 0
    out = capsys.readouterr().out
    assert "clean stop: False" in out  # the demo stops without GatewayStopped: a crash to recovery
    assert "same table and external ports: yes" in out
    assert "was held by alice" in out
    assert any(p.name.startswith("seg-") for p in journal.iterdir())


def test_a_bad_client_count_is_one_line_and_exit_2(capsys) -> None:
    assert main(["demo", "--clients", "0"]) == 2
    err = capsys.readouterr().err
    assert "--clients 0: choose 1 to 200 clients" in err and "Traceback" not in err


def test_a_non_number_is_refused_by_argparse_with_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--clients", "many"])
    assert exit_info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_a_journal_directory_that_is_not_empty_is_refused(capsys, tmp_path) -> None:
    (tmp_path / "something").write_text("x")
    assert main(["demo", "--journal", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_python_m_gw_help_teaches_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "gw", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "gw-audit" in out


def test_demo_into_a_closed_pipe_ends_quietly() -> None:
    """`gw demo | head -1`: the reader leaves early; no traceback, and the temporary journal is removed."""
    proc = subprocess.Popen([sys.executable, "-m", "gw", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"gw ")
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert err == b"" and proc.returncode == 0


def test_version_says_which_nat_fast_path_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "gw", "--version"], capture_output=True, text=True, check=True)
    assert "NAT fast path: " in out.stdout


def test_keys_new_prints_the_fingerprint_and_the_config_lines_and_show_prints_it_again(capsys, tmp_path) -> None:
    assert main(["keys", "new", "alice", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    fp = out.split("fingerprint: ")[1].split()[0]
    assert f'fingerprint = "{fp}"' in out and "[[clients]]" in out and "[identity]" in out
    assert main(["keys", "show", str(tmp_path / "alice.crt")]) == 0
    assert f"fingerprint: {fp}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["keys", "new", "a/b"], ["keys", "show", "/nonexistent.crt"]])
def test_keys_mistakes_are_one_line_and_exit_2(capsys, tmp_path, argv) -> None:
    assert main(argv + (["--dir", str(tmp_path)] if argv[1] == "new" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("gw: ") and err.count("\n") == 1 and "Traceback" not in err
