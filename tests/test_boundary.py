"""The trust boundary: trusted/ and untrusted/ never import each other.

Checked twice: import-linter's independence contract (pyproject.toml) over the real import
graph, and a direct scan of every module's imports, including lazy ones inside functions
(which import-linter also sees) and ``importlib.import_module("...")`` strings (which it
does not)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def boundary_violations(root: Path) -> list[str]:
    bad = []
    for side, other in (("trusted", "untrusted"), ("untrusted", "trusted")):
        for path in sorted((root / side).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                      and node.args and isinstance(node.args[0], ast.Constant)):
                    names = [str(node.args[0].value)]
                for name in names:
                    if name == other or name.startswith(other + "."):
                        bad.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    return bad


def test_trusted_and_untrusted_import_nothing_from_each_other():
    assert boundary_violations(ROOT) == []


def test_the_scan_catches_a_violation(tmp_path):
    for side in ("trusted", "untrusted"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "__init__.py").write_text("")
    (tmp_path / "trusted" / "leak.py").write_text("def f():\n    from untrusted import host\n")
    (tmp_path / "untrusted" / "peek.py").write_text("import importlib\nimportlib.import_module('trusted.suvm')\n")
    found = boundary_violations(tmp_path)
    assert len(found) == 2 and "trusted/leak.py:2" in found[0] and "untrusted/peek.py:2" in found[1]


def test_import_linter_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "KEPT" in r.stdout
