"""A small but complete project for the report stage: the real outputs of a tiny pipeline run.

``data/`` beside this module holds what the report stage reads, copied from a run of ``params/tiny.yaml``
(``l2o run --params params/tiny.yaml``)::

    metrics/evaluation.json, metrics/headline.json, metrics/meta_train.json, metrics/curves/<task>.json
    models/lopt/curves.json, models/lopt/config.json, models/safeguard.json
    data/prepared/manifest.json

Refresh it after a change of the evaluate stage's schema with
``.venv/bin/python tests/components/reporting/report_fixture.py /path/to/tiny/project`` (curves are rounded to
6 significant digits to keep the fixture small; every other file is copied byte for byte).
"""

import json
import math
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
FILES = [
    "metrics/evaluation.json",
    "metrics/headline.json",
    "metrics/meta_train.json",
    "models/lopt/curves.json",
    "models/lopt/config.json",
    "models/safeguard.json",
    "data/prepared/manifest.json",
]


def make_project(dest: Path) -> Path:
    """Copy the fixture into ``dest`` (created) and return it: a project the report stage can run on."""
    shutil.copytree(DATA, dest, dirs_exist_ok=True)
    return dest


def _round(x, digits: int = 6):
    if isinstance(x, float) and math.isfinite(x) and x != 0.0:
        return round(x, digits - 1 - math.floor(math.log10(abs(x))))
    if isinstance(x, list):
        return [_round(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    return x


def refresh(src: Path) -> None:
    """Replace the fixture with the outputs of the project at ``src``."""
    src = Path(src)
    evaluation = json.loads((src / FILES[0]).read_text())
    shutil.rmtree(DATA, ignore_errors=True)
    for rel in FILES:
        (DATA / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, DATA / rel)
    (DATA / "metrics/curves").mkdir(parents=True)
    for task in evaluation["tasks"]:
        curves = json.loads((src / "metrics/curves" / f"{task}.json").read_text())
        (DATA / "metrics/curves" / f"{task}.json").write_text(json.dumps(_round(curves), separators=(",", ":")))
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    print(f"fixture: {total / 1024:.0f} KiB in {DATA}")


if __name__ == "__main__":
    refresh(Path(sys.argv[1]))
