"""Loading, overriding and validating params files, with errors people can act on."""

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from components.stages.params import PipelineParams

__all__ = ["ParamsError", "load_params", "apply_overrides", "dump_params", "RESOLVED_PARAMS"]

# DVC's default params file: the resolved params of the active experiment (written by `l2o run`).
RESOLVED_PARAMS = "params.yaml"


class ParamsError(ValueError):
    """Invalid params: the message lists every problem with its YAML path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"invalid params in {source} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n"
            f"{lines}\nFix the file or the --set values; params/default.yaml is a complete valid example."
        )


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    import copy  # noqa: PLC0415

    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set evaluate.num_seeds=5")
            continue
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            problems.append(f"--set {item!r}: empty key")
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})")
            continue
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                problems.append(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                break
            node = nxt
        else:
            node[parts[-1]] = parsed
    if problems:
        raise ParamsError(source, problems)
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_params(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineParams:
    """Read a YAML params file, apply ``--set`` overrides and validate it.

    Raises:
      ParamsError: missing/unreadable file, invalid YAML, unknown keys, wrong types, out-of-range
        or inconsistent values — all problems in one message, each with its YAML path.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ParamsError(
            source, [f"file not found: {path} (pass an existing file, e.g. --params params/default.yaml)"]
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ParamsError(source, [f"the top level must be a mapping of sections, got {type(raw).__name__}"])
    if overrides:
        # --set a.b.c=v on a file that leaves section a.b to its defaults edits the defaults
        raw = apply_overrides(_merge(PipelineParams().model_dump(mode="json"), raw), list(overrides), source)
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _format_loc(err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{loc}: unknown key (check the spelling; allowed keys are in params/default.yaml)")
            elif err["type"] == "value_error":
                problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"{loc}: {err['msg']} (got {_short(err.get('input'))})")
        raise ParamsError(source, problems) from None


def dump_params(params: PipelineParams, origin: str) -> str:
    header = (
        f"# Resolved params of the active experiment, written by `l2o run` from {origin}.\n"
        "# DVC reads this file (dvc.yaml params); edit params/*.yaml and use `l2o run` instead.\n"
    )
    return header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
