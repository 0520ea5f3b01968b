"""Layering rules: the library never imports orchestration or params packages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ["data", "tasks", "optimizers", "meta", "evaluation", "reporting"]
FORBIDDEN_IN_LIBRARY = {"prefect", "mlflow", "dvc", "pydantic"}
FORBIDDEN_IN_STAGES = {"prefect", "mlflow", "dvc"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LIBRARY)
def test_library_packages_import_no_orchestration(package):
    files = sorted((REPO / "components" / package).rglob("*.py"))
    assert files, f"components/{package} has no modules"
    bad = {str(f.relative_to(REPO)): sorted(_imports(f) & FORBIDDEN_IN_LIBRARY) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_stages_never_touch_prefect_mlflow_or_dvc():
    files = sorted((REPO / "components" / "stages").glob("*.py"))
    bad = {str(f.relative_to(REPO)): sorted(_imports(f) & FORBIDDEN_IN_STAGES) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_importing_the_library_loads_no_orchestration_modules():
    code = (
        "import sys\n"
        + "".join(f"import components.{p}\n" for p in LIBRARY)
        + "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'dvc', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scan_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom mlflow.tracking import MlflowClient\nimport prefect.flows\n")
    assert _imports(bad) & FORBIDDEN_IN_LIBRARY == {"mlflow", "prefect"}


# --- stages: independent, and dvc.yaml's code deps cover what each stage runs -------------------------------------

MIRROR_SETTING = ("components/stages/fetch.py", "MIRROR_ENV")  # the one documented environment setting


def _module_file(name: str) -> Path | None:
    """The file of module ``name`` (``components.x.y``) in this repository, or None if it is not one."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _components_imports(path: Path) -> set[str]:
    """Every ``components`` module ``path`` imports (anywhere in it, also inside functions), with their packages."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "components"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{module}.{node.module}" if node.module else module
            else:
                module = node.module or ""
            if module.split(".")[0] != "components":
                continue
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")}
    with_packages = set()
    for name in found:
        parts = name.split(".")
        with_packages |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {n for n in with_packages if _module_file(n)}


def code_closure(module: str) -> set[Path]:
    """The files of ``module`` and of every ``components`` module it imports, transitively (empty ``__init__``s
    left out: they run no code)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(_components_imports(_module_file(name)) - seen)
    files = {_module_file(n) for n in seen}
    return {f for f in files if f.read_text().strip()}


def _dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def uncovered(files: set[Path], deps: list) -> list[str]:
    """The files no dep path covers (a dep is a file, or a folder covering everything under it)."""
    paths = [REPO / d for d in deps if isinstance(d, str)]
    return sorted(str(f.relative_to(REPO)) for f in files if not any(f == p or p in f.parents for p in paths))


def _stage_module(name: str, stage: dict) -> str:
    assert stage["cmd"].split()[:3] == ["l2o", "stage", name], f"dvc.yaml stage {name}: cmd {stage['cmd']!r}"
    return f"components.stages.{name}"


@pytest.mark.parametrize("name", sorted(_dvc_stages()))
def test_dvc_code_deps_cover_every_module_the_stage_runs(name):
    stage = _dvc_stages()[name]
    missing = uncovered(code_closure(_stage_module(name, stage)), stage["deps"])
    assert not missing, f"dvc.yaml stage {name} runs these files but does not list them (or a folder of them) in deps"


def test_the_deps_check_finds_a_missing_dep():
    stage = _dvc_stages()["evaluate"]
    files = code_closure("components.stages.evaluate")
    assert REPO / "components/evaluation/claims.py" in files  # through evaluation.summary
    assert REPO / "components/stages/inputs.py" in files
    deps = [d for d in stage["deps"] if d not in ("components/evaluation", "components/stages/inputs.py")]
    missing = uncovered(files, deps)
    assert "components/stages/inputs.py" in missing and "components/evaluation/claims.py" in missing


def test_no_stage_imports_another_stage():
    stages = set(_dvc_stages())
    for name in stages:
        closure = code_closure(f"components.stages.{name}")
        others = {REPO / "components" / "stages" / f"{s}.py" for s in stages - {name}}
        assert not closure & others, f"stage {name} imports {sorted(str(p.name) for p in closure & others)}"


def test_components_read_no_environment_variables():
    """No ``os.environ`` / ``os.getenv`` in the library or the stages but the data-mirror setting."""
    reads = []
    for path in sorted((REPO / "components").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                line = path.read_text().splitlines()[node.lineno - 1]
                if (rel, MIRROR_SETTING[1]) == MIRROR_SETTING and MIRROR_SETTING[1] in line:
                    continue
                reads.append(f"{rel}:{node.lineno}: {line.strip()}")
    assert not reads, "components/ reads the environment; pass the value as an argument instead:\n" + "\n".join(reads)
