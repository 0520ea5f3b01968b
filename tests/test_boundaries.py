"""Layering rules: the library never imports orchestration or params packages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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
