"""The sans-I/O boundary (STYLE section 2, checklist section 9): the cores import nothing that does I/O,
runs an event loop or reads a clock, directly or through another module of this repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORES = [
    "gw/packet.py",
    "gw/nat.py",
    "gw/frag.py",
    "gw/tcp_track.py",
    "gw/router.py",
    "gw/config.py",
    "gw/verdict.py",
    "gw/rewrite.py",
    "gw/mapping.py",
    "gw/ports.py",
    "gw/clients.py",
    "gw/snapshot.py",
    "gw/pending.py",
    "gw/vnet.py",
    "gw/transport/wire.py",
    "gw/sessions.py",
    "gw/offload.py",
    "gw/dnsproxy.py",
    "gw/strict.py",
    "gw/external/link.py",
    "gw/external/icmp_errors.py",
    "journal/events.py",
]
# I/O, event loops, threads, clocks, logging (the shell's job). subprocess and datetime for the same reasons.
FORBIDDEN = {
    "asyncio",
    "socket",
    "select",
    "selectors",
    "threading",
    "time",
    "os",
    "logging",
    "subprocess",
    "datetime",
    "uvloop",
    "winloop",
    "gc",  # the process-wide garbage collector is the shell's to tune, never a core's
}
# gw/inet.py converts addresses with socket.inet_ntoa, a pure function: that single use is allowed.
ALLOWED = {("gw/inet.py", "socket"): {"inet_ntoa"}}
# cores that may call a builtin doing I/O, and which: config.load reads the file it is given
IO_BUILTINS = {"open", "print", "input", "breakpoint", "exec", "eval", "__import__"}
ALLOWED_CALLS = {("gw/config.py", "open"): {"load", "_read"}}  # _read: load and load_client


def _tree(rel: str) -> ast.Module:
    return ast.parse((ROOT / rel).read_text(encoding="utf-8"), rel)


def _imports(rel: str) -> list[tuple[str, int]]:
    return _imports_in(_tree(rel))


def _imports_in(tree: ast.Module) -> list[tuple[str, int]]:
    """(module name, line) for every import in a file, at any depth (function-level imports count too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]  # `from gw import inet`
    return found


def _local_file(module: str) -> str | None:
    """The repository file a dotted module name is, if it is one of ours."""
    parts = module.split(".")
    if parts[0] not in ("gw", "journal"):
        return None
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def _closure(rel: str) -> set[str]:
    """The file and every repository module it imports, transitively."""
    seen, todo = {rel}, [rel]
    while todo:
        for module, _ in _imports(todo.pop()):
            local = _local_file(module)
            if local and local not in seen:
                seen.add(local)
                todo.append(local)
    return seen


def _violations(rel: str) -> list[str]:
    bad = []
    for module, line in _imports(rel):
        root = module.split(".")[0]
        if root in FORBIDDEN and (rel, root) not in ALLOWED:
            bad.append(f"{rel}:{line} imports {module}")
    for (path, module), names in ALLOWED.items():
        if path != rel:
            continue
        for node in ast.walk(_tree(rel)):
            if isinstance(node, ast.ImportFrom) and node.module == module:
                bad.append(
                    f"{rel}:{node.lineno} from-imports {module}: only {module}.{'/'.join(names)} is allowed"
                )
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == module
                and node.attr not in names
            ):
                bad.append(f"{rel}:{node.lineno} uses {module}.{node.attr}")
    return bad


def _io_calls(rel: str, tree: ast.Module | None = None) -> list[str]:
    """Calls of I/O builtins, each with the innermost function it sits in."""
    bad = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id in IO_BUILTINS
            ):
                if where not in ALLOWED_CALLS.get((rel, child.func.id), set()):
                    bad.append(f"{rel}:{child.lineno} calls {child.func.id}() in {where}")
            visit(child, child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where)

    visit(tree or _tree(rel), "<module>")
    return bad


@pytest.mark.parametrize("core", CORES)
def test_core_module_and_everything_it_imports_do_no_io_and_read_no_clock(core: str) -> None:
    modules = _closure(core)
    assert core in modules
    problems = [p for m in sorted(modules) for p in _violations(m)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("core", CORES)
def test_core_module_calls_no_io_builtins_outside_config_load(core: str) -> None:
    assert _io_calls(core) == []


def test_the_checker_finds_nested_and_transitive_imports_and_io_calls() -> None:
    """The checker itself must be able to fail."""
    src = "def f():\n    import time\n    return time.monotonic()\nfrom os import path\n"
    found = {m for m, _ in _imports_in(ast.parse(src))}
    assert {"time", "os"} <= found
    assert "gw/inet.py" in _closure("gw/router.py") and "gw/packet.py" in _closure("gw/nat.py")
    assert "journal/events.py" in _closure("gw/nat.py")
    snippet = ast.parse("def load(p):\n    return open(p)\ndef parse(t):\n    print(t)\n    return open(t)\n")
    assert _io_calls("gw/config.py", snippet) == [
        "gw/config.py:4 calls print() in parse",
        "gw/config.py:5 calls open() in parse",
    ]


def test_inet_uses_socket_only_for_inet_ntoa() -> None:
    assert _violations("gw/inet.py") == []
    assert any(m == "socket" for m, _ in _imports("gw/inet.py")), (
        "update ALLOWED if inet.py stops using socket"
    )


# -- the arrows between packages (issue 9, "Structure"): tools -> gw -> journal; bench -> the package ----

# (package or file, imported package or module it must never import, why)
LAYER_RULES = [
    ("gw", "tools", "gw is imported by the tools, never the other way (nor run: see the string check)"),
    ("journal", "gw", "journal owns the schema and file format and imports nothing from gw"),
    ("journal", "tools", "journal is below the tools"),
    ("bench", "tests", "benchmarks use the package, never the test suite's helpers"),
    ("tools/audit.py", "journal.writer", "gw-audit is read-only: it has no business with the writer"),
]


def _python_files(where: str) -> list[str]:
    path = ROOT / where
    if path.is_file():
        return [where]
    return sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))


def _layer_violations(where: str, banned: str, tree_of=_tree) -> list[str]:
    bad = []
    for rel in _python_files(where) if tree_of is _tree else [where]:
        tree = tree_of(rel)
        for module, line in _imports_in(tree):
            if module == banned or module.startswith(banned + "."):
                bad.append(f"{rel}:{line} imports {module}")
        if banned == "tools":  # running a tool (python -m tools.audit) is depending on it too
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if node.value == "tools" or node.value.startswith("tools."):
                        bad.append(f"{rel}:{node.lineno} names the module {node.value!r}")
    return bad


@pytest.mark.parametrize(("where", "banned", "why"), LAYER_RULES, ids=lambda x: str(x)[:20])
def test_imports_point_one_way(where: str, banned: str, why: str) -> None:
    assert _layer_violations(where, banned) == [], why


def test_the_layer_checker_can_fail() -> None:
    snippets = {
        "gw/x.py": ("def f():\n    from tools.audit import main\n", "tools"),
        "gw/y.py": ("import subprocess\nsubprocess.run(['python', '-m', 'tools.audit'])\n", "tools"),
        "journal/x.py": ("from gw import inet\n", "gw"),
        "bench/x.py": ("from tests.helpers.history import generate\n", "tests"),
        "tools/audit.py": ("from journal.writer import JournalWriter\n", "journal.writer"),
    }
    for rel, (src, banned) in snippets.items():
        found = _layer_violations(rel, banned, tree_of=lambda _r, s=src: ast.parse(s))
        assert found, rel
    assert _layer_violations("x.py", "journal.writer", tree_of=lambda _r: ast.parse("import journal.writerx")) == []
