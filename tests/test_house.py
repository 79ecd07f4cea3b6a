"""The house rules, checked with ast: small modules, short functions, no upward imports.

- No module over :data:`MAX_MODULE_LINES` lines and no function over
  :data:`MAX_FUNCTION_LINES` across ``cloak/``, ``scripts/`` and ``experiments/``.
- Nothing in ``cloak/`` outside ``cloak/evaluation/`` imports ``cloak.evaluation``: the
  evaluation measures the cloak, the cloak never depends on it.

What is over a limit today is listed in :data:`KNOWN_OVER` with the reason; the test fails
when it grows, and when an entry is no longer over (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ("cloak", "scripts", "experiments")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 70

#: The binary dlib format reader is one concept, read top to bottom.
EXEMPT_MODULES = {"cloak/models/dlib_format.py"}

#: Over a limit today, each with why it is left as is (module path, or ``path:function``).
KNOWN_OVER: dict[str, str] = {}


def _sources() -> list[Path]:
    return sorted(p for tree in TREES for p in (ROOT / tree).rglob("*.py") if ".venv" not in p.parts)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def over_limits(module_lines: int = MAX_MODULE_LINES, function_lines: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """Every module and function over its limit, with its length in lines."""
    found = {}
    for path in _sources():
        name = _name(path)
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > module_lines and name not in EXEMPT_MODULES:
            found[name] = lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > function_lines:
                    found[f"{name}:{node.name}"] = length
    return found


def upward_imports() -> list[str]:
    """``path: module`` for every import of ``cloak.evaluation`` outside ``cloak/evaluation/``."""
    found = []
    for path in _sources():
        name = _name(path)
        if not name.startswith("cloak/") or name.startswith("cloak/evaluation/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            found += [f"{name}: {m}" for m in modules if m == "cloak.evaluation" or m.startswith("cloak.evaluation.")]
    return found


def test_no_module_or_function_grows_past_the_limits():
    over = over_limits()
    new = {k: v for k, v in over.items() if k not in KNOWN_OVER}
    assert not new, f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per function: {new}"
    fixed = sorted(set(KNOWN_OVER) - set(over))
    assert not fixed, f"no longer over the limits; remove from KNOWN_OVER: {fixed}"


def test_the_core_never_imports_the_evaluation():
    assert upward_imports() == []


def test_the_checks_see_what_they_check():
    """The walkers find this repository's modules, long functions and imports (they cannot pass empty)."""
    sources = {_name(p) for p in _sources()}
    assert {"cloak/api.py", "scripts/bench.py", "experiments/run.py", "cloak/models/dlib_format.py"} <= sources
    assert set(over_limits()) <= set(KNOWN_OVER)
    # The attack's constructor is about 67 lines and the attack module about 450: tighter limits must see them.
    tighter = over_limits(module_lines=400, function_lines=60)
    assert "cloak/attacks/base.py:Attack.__init__" in tighter or "cloak/attacks/base.py:__init__" in tighter, (
        "no function measured"
    )
    assert "cloak/attacks/base.py" in tighter, "no module measured"
