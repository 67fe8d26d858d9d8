"""The compiled twin cannot drift from its Python specification unnoticed.

``gw/_fastpath.pyx`` reaches into the ``Nat`` by attribute name and copies a few constants; a renamed
member would break only the compiled path, and only at run time. These checks read the .pyx source, so
they fail in the test run, whether or not the extension is built.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from gw import mapping, nat
from gw.config import NatConfig

ROOT = Path(__file__).resolve().parents[2]
PYX = (ROOT / "gw/_fastpath.pyx").read_text(encoding="utf-8")


def _code(source: str) -> str:
    """The source without its docstrings and comments."""
    source = re.sub(r'"""(.|\n)*?"""', "", source)
    return "\n".join(line.split("#", 1)[0] for line in source.splitlines())


CODE = _code(PYX)


def test_every_nat_member_the_compiled_path_uses_exists_on_the_nat() -> None:
    used = set(re.findall(r"\bnat\.([A-Za-z_]\w*)", CODE))
    assert len(used) > 20  # the pattern still finds them
    table = nat.Nat(NatConfig(external_addresses=["198.51.100.1"]), compiled=False)
    missing = sorted(name for name in used if not hasattr(table, name))
    assert missing == [], f"gw/_fastpath.pyx uses Nat members that do not exist: {missing}"


def test_every_name_the_compiled_path_imports_exists() -> None:
    imports = re.findall(r"^from (gw[\w.]*|journal[\w.]*|heapq) import (\w+)", CODE, re.M)
    assert len(imports) > 5
    for module, name in imports:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    used_p = set(re.findall(r"\bP\.([A-Za-z_]\w*)", CODE))
    from gw import packet

    assert sorted(n for n in used_p if not hasattr(packet, n)) == []


def test_the_copied_expire_budget_is_the_nats() -> None:
    [copy] = re.findall(r"cdef object _EXPIRE_BUDGET = ([\d_]+)", PYX)
    assert int(copy) == nat.EXPIRE_BUDGET


def test_the_compiled_path_never_imports_the_module_that_imports_it() -> None:
    assert not re.search(r"^\s*(from gw\.nat |from gw import nat|import gw\.nat)", CODE, re.M)


def test_the_compiled_mapping_has_the_python_mappings_members() -> None:
    if not mapping.COMPILED:
        return  # nothing to compare; tests/property/test_fastpath_compiled.py fails CI when unbuilt
    for py, compiled in ((mapping.PyMapping, mapping.Mapping), (mapping.PyTcpMapping, mapping.TcpMapping)):
        args = (1, 2, 3, 4, 5, 6, 7)
        a, b = py(*args), compiled(*args)
        names = {n for n in dir(a) if not n.startswith("__")}
        assert names <= {n for n in dir(b) if not n.startswith("__")}, py.__name__
        assert {n: getattr(a, n) for n in names if not callable(getattr(a, n))} == {
            n: getattr(b, n) for n in names if not callable(getattr(b, n))
        }
