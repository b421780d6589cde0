"""The library's shape, as the style guide asks: small modules, short functions, no import cycles, and no
runner that branches on an editor's name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mendlab"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_modules_are_at_most_400_lines_and_functions_at_most_60():
    long_modules = [str(p) for p in MODULES if len(p.read_text().splitlines()) > 400]
    long_functions = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_every_module_imports_first_without_a_cycle():
    # each module imported first, in a clean package state: a cycle fails whichever module starts it
    code = ("import importlib, sys\nfailed = []\n"
            f"for name in {[_dotted(p) for p in MODULES]!r}:\n"
            "    for m in [m for m in sys.modules if m == 'mendlab' or m.startswith('mendlab.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except ImportError as e:\n        failed.append(f'{name}: {e}')\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_runner_branches_on_an_editor_name():
    # outside the editors and their registry, a method's name may be a default or a label, never a condition
    name = r"""["'](mend|ft|ft_kl|ke|enn)["']"""
    branch = re.compile(rf"(==|!=|\bin\b)\s*\(?{name}|{name}\s*(==|!=)")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
                 for p in MODULES if "editors" not in p.relative_to(PACKAGE).parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert not offenders, offenders
