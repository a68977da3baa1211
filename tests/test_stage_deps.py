"""dvc.yaml lists, for every stage, each ferpipe module the stage's script can import: a change to one of
them must re-run the stage, or `dvc repro` would keep outputs that the new code would not make."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO


def ferpipe_imports(path: Path) -> set[str]:
    """The ferpipe modules (as repo-relative file paths) that `path` imports, at the top or inside functions."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ferpipe":
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from ferpipe import data`
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ferpipe")
    files = {"ferpipe/__init__.py"}  # importing any ferpipe module runs the package's __init__
    for module in modules:
        candidate = Path(*module.split(".")).with_suffix(".py")
        if (REPO / candidate).is_file():
            files.add(candidate.as_posix())
    return files


def reachable(script: str) -> set[str]:
    """Every ferpipe module file that `script` imports, directly or through other ferpipe modules."""
    seen, todo = set(), [script]
    while todo:
        for module in ferpipe_imports(REPO / todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_every_ferpipe_module_its_script_imports(stage):
    script = STAGES[stage]["cmd"].split()[-1]
    deps = {dep if isinstance(dep, str) else next(iter(dep)) for dep in STAGES[stage]["deps"]}
    assert script in deps
    missing = sorted(reachable(script) - deps)
    assert not missing, f"dvc.yaml: stage {stage} imports {missing} but does not list them as deps"


def test_the_import_scan_finds_imports_inside_functions(tmp_path, monkeypatch):
    script = tmp_path / "script.py"
    script.write_text("from ferpipe import FerError, data\n\ndef main():\n    from ferpipe.export import parity\n")
    assert ferpipe_imports(script) == {"ferpipe/__init__.py", "ferpipe/data.py", "ferpipe/export.py"}
