"""core/ decides; it must not do I/O, read a clock or draw randomness of its own."""
import ast
from pathlib import Path

import haven.core

FORBIDDEN = {"time", "random", "socket", "subprocess", "asyncio", "threading", "os", "io", "pathlib",
             "datetime", "uuid", "secrets", "requests", "httpx", "urllib", "shutil", "tempfile",
             "signal", "select", "multiprocessing", "concurrent", "sqlite3", "logging"}
ALLOWED_HAVEN = ("haven.core", "haven.model", "haven.ports")
CORE = Path(haven.core.__file__).parent


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_imports_nothing_that_does_io_or_reads_a_clock():
    problems = []
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 4
    for path in files:
        for name in imports(path):
            root = name.split(".")[0]
            if root in FORBIDDEN:
                problems.append(f"{path.name} imports {name}")
            if root == "haven" and not name.startswith(ALLOWED_HAVEN):
                problems.append(f"{path.name} imports {name} (core may use only model and ports)")
    assert problems == []


def test_core_never_calls_builtin_io():
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not calls & {"open", "print", "input", "exec", "eval"}, path.name


def test_the_check_itself_catches_a_clock(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom os import path\n")
    assert {"time", "os"} <= {n.split(".")[0] for n in imports(bad)}
