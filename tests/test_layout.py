"""The tree shows the architecture, and dvc.yaml agrees with the code: each stage depends on exactly
the files it runs, and writes where paths.py says."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from dogs_vs_cats import paths
from dogs_vs_cats.stages import MEMBER_STAGES, STAGES
from harness import ROOT

PACKAGE = ROOT / "src" / "dogs_vs_cats"
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LIBRARY = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "cli"}


def _file(module: str) -> Path:
    """The file of a dotted module name inside the package: "stages.train" -> stages/train.py."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    return path if path.is_file() else PACKAGE / module.replace(".", "/") / "__init__.py"


def _imports(module: str) -> set[str]:
    """The package's modules that `module` imports (relative imports, at the top or inside a function)."""
    path = _file(module)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:  # `from . import x`: the module x, or a name defined in the package itself
                for a in node.names:
                    name = ".".join(base + [a.name])
                    found.add(name if _file(name).is_file() else ".".join(base))
    return found


def _runs(module: str) -> set[str]:
    """`module`, its packages' __init__ files and everything they import from the package, transitively."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(_imports(m))
        todo.append(m.rsplit(".", 1)[0] if "." in m else "")
    return seen


def _name(module: str) -> str:
    return str(_file(module).relative_to(ROOT)) if module else "src/dogs_vs_cats/__init__.py"


def _specs():
    """(name, definition) of every stage; a member's stage (foreach over the seeds) by its `do` block."""
    for stage, spec in PIPELINE.items():
        yield stage, spec.get("do", spec)


def test_each_stage_is_the_module_its_dvc_yaml_name_says():
    assert list(PIPELINE) == list(STAGES)
    assert {p.stem for p in (PACKAGE / "stages").glob("*.py")} == set(STAGES) | {"__init__", "__main__"}
    for stage, spec in _specs():
        member = stage in MEMBER_STAGES
        assert PIPELINE[stage].get("foreach") == ("${ensemble.seeds}" if member else None), stage
        assert spec["cmd"] == f"python -m dogs_vs_cats.stages {stage}" + (" --seed ${item}" if member else "")
        assert spec["deps"][0] == f"src/dogs_vs_cats/stages/{stage}.py", stage


def test_every_stage_lists_exactly_the_source_files_it_runs():
    for stage, spec in _specs():
        listed = {d for d in spec["deps"] if d.startswith("src/")}
        assert listed == {_name(m) for m in _runs(f"stages.{stage}") | _runs("stages.__main__")}, stage
        assert all((ROOT / d).is_file() for d in listed)


def test_no_stage_runs_the_cli_or_a_command():
    for stage in STAGES:
        ran = _runs(f"stages.{stage}")
        assert "cli" not in ran and not any(m.startswith("commands") for m in ran), stage
        assert not any(m.startswith("stages.") and m != f"stages.{stage}" for m in ran), stage


def test_the_library_imports_no_stage_and_no_command():
    for module in LIBRARY:
        assert all(m.split(".")[0] in LIBRARY | {""} for m in _runs(module)), module


def test_the_benches_never_import_the_tests():
    for script in (ROOT / "bench").glob("*.py"):
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("harness", "conftest", "tests") for n in names), script.name
        assert '"tests"' not in script.read_text(), script.name  # no sys.path reaching into tests/


def test_dvc_yaml_outputs_are_the_paths_the_code_writes():
    declared = set()
    for _, spec in _specs():
        for entry in spec.get("outs", []) + spec.get("metrics", []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    written = {str(v) for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)}
    written |= {str(v) for v in paths.FORM_METRICS.values()}
    # A member's files, as dvc.yaml's foreach names them: the seed is ${item}.
    member = paths.Member("${item}")
    runs = (member.teacher_run, member.student_run)
    written |= {str(p) for r in runs for p in (r.metrics, r.log, r.val_log)} | {str(member.unlabelled)}
    written |= {str(member.teacher.parent), str(member.model.parent)}
    written |= {str(p) for p in (paths.EDGE_RUN.log, paths.EDGE_RUN.val_log)}
    inside = {paths.MODEL, paths.EDGE_MODEL, paths.MEMBERS, paths.MEMBER_METRICS}  # in declared folders
    working = {paths.DOWNLOAD_STAGING, paths.TRAIN_STATE, paths.STUDENT_STATE, paths.EDGE_STATE}
    stage_outputs = written - {str(v) for v in inside | working}
    assert declared == stage_outputs
    assert paths.MODEL.parent == paths.MODEL_DIR and paths.EDGE_MODEL.parent == paths.EDGE_DIR
    assert (paths.EDGE_RUN.model, paths.EDGE_RUN.metrics) == (paths.EDGE_MODEL, paths.EDGE_METRICS)
    assert all(r.state.parent in (paths.TRAIN_STATE, paths.STUDENT_STATE) for r in runs)
