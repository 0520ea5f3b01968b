"""What every benchmark script writes next to its printed table: one JSON document per run.

``write_results(name, doc, out)`` adds the run's provenance (benchmark name, UTC date, JAX backend,
device kind, JAX version) to ``doc`` and writes it atomically (temporary file, then rename) to
``out`` or ``benchmarks/results/<name>_<backend>.json``.
"""

import datetime
import json
import os
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, doc: dict, out: str | os.PathLike | None = None) -> Path:
    """Write ``doc`` with provenance fields first; returns the path written."""
    backend = jax.default_backend()
    full = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": backend,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        **doc,
    }
    path = Path(out) if out else RESULTS / f"{name}_{backend}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=1) + "\n")
    os.replace(tmp, path)
    return path
