"""dvc.yaml and the code agree: each stage depends on the modules it runs, and writes where paths.py says."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from dogs_vs_cats import paths
from dogs_vs_cats.cli import STAGES
from harness import ROOT

PACKAGE = ROOT / "src" / "dogs_vs_cats"
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _imports(module: str) -> set[str]:
    """The package's modules that `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
    return found


def _runs(module: str) -> set[str]:
    """`module` and everything it imports from the package, transitively."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(_imports(m))
    return seen


def test_every_stage_lists_exactly_the_source_files_it_runs():
    assert list(PIPELINE) == list(STAGES)
    for stage, spec in PIPELINE.items():
        assert spec["cmd"] == f"dogs-vs-cats {stage}"
        listed = {Path(d).name for d in spec["deps"] if d.startswith("src/")}
        # The CLI dispatches to every command; what the stage runs is the CLI file plus its own module's imports.
        assert listed == {f"{m}.py" for m in _runs(stage) | {"cli"}}, stage
        assert all((ROOT / d).is_file() for d in spec["deps"] if d.startswith("src/"))


def test_no_stage_module_imports_another_stage():
    for stage in STAGES:
        assert not (_imports(stage) & set(STAGES)), stage


def test_dvc_yaml_outputs_are_the_paths_the_code_writes():
    declared = set()
    for spec in PIPELINE.values():
        for entry in spec.get("outs", []) + spec.get("metrics", []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    written = {str(v) for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)}
    written |= {str(v) for v in paths.FORM_METRICS.values()}
    inside = {paths.MODEL, paths.TEACHER, paths.PSEUDO_LABELS, paths.STUDENT_RECORDS}  # files in declared folders
    working = {paths.DOWNLOAD_STAGING, paths.TRAIN_STATE, paths.STUDENT_STATE}
    stage_outputs = written - {str(v) for v in inside | working}
    assert declared == stage_outputs
    assert paths.MODEL.parent == paths.MODEL_DIR
