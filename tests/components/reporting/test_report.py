"""The report stage on the real outputs of a tiny pipeline run, checked as HTML and in headless Chromium.

The project is :mod:`report_fixture`'s copy of a ``params/tiny.yaml`` run (3 tasks, 2 seeds, learned, guarded, tuned
Adam and SGD + momentum, horizon multiplier 2). Expected numbers are computed here from that fixture's
``evaluation.json``; the browser checks need ``/usr/bin/chromium`` (``make test`` installs it).
"""

import html
import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from components.stages import report
from components.stages.params import PipelineParams
from tests.browser import open_page
from tests.components.reporting.report_fixture import make_project

REPO = Path(__file__).resolve().parents[3]
RUN_ID = "0123456789abcdef0123456789abcdef"
H2 = [
    "Provenance",
    "Headline: learned optimizers vs tuned baselines",
    "Stability at 2\u00d7 horizon",
    "Per-task results",
    "Learning curves",
    "Learning-rate tuning",
    "Meta-training",
    "Safeguard (LGL2O)",
    "Params",
]
ORDER = ["learned", "guarded", "adam", "sgdm"]
EN_DASH = "\u2013"
VOID = {"meta", "link", "img", "br", "hr", "input", "col", "source", "wbr", "area", "base", "embed", "track"}


def tiny_params() -> PipelineParams:
    return PipelineParams(**yaml.safe_load((REPO / "params" / "tiny.yaml").read_text()))


def build_report(root: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[object, list[str]]:
    for var in report.MLFLOW_RUN_ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    logs: list[str] = []
    result = report.run(tiny_params(), root, log=logs.append)
    return result, logs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of the unmodified fixture (with a stale ``reports/`` to be replaced), built once."""
    root = make_project(tmp_path_factory.mktemp("report") / "project")
    (root / "reports").mkdir()
    (root / "reports" / "stale.txt").write_text("from an earlier run")
    with pytest.MonkeyPatch.context() as mp:
        result, logs = build_report(root, mp, L2O_MLFLOW_PARENT_RUN_ID=RUN_ID, MLFLOW_RUN_ID="child-run")
    evaluation = json.loads((root / "metrics" / "evaluation.json").read_text())
    page = (root / "reports" / "index.html").read_text(encoding="utf-8")
    return root, result, logs, evaluation, page


# --- helpers -----------------------------------------------------------------------------------------------------


def ratio(v: float) -> str:
    """The page's format of a ratio to tuned Adam: 2 decimals from 0.1 on, else 2 significant digits."""
    return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.2g}"


def ci(stat: dict) -> str:
    return f"{ratio(stat['value'])} [{ratio(stat['ci_low'])}, {ratio(stat['ci_high'])}]"


class _Tables(HTMLParser):
    """Cell texts of every table with an id: ``{id: [[cell, ...], ...]}`` (header rows included)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.widths: dict[str, list[int]] = {}  # per table, the width of each row in columns (colspan counted)
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            if self._table:
                self.tables[self._table] = []
                self.widths[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.widths[self._table].append(0)
        elif tag in ("td", "th") and self._table:
            self._cell = []
            self.widths[self._table][-1] += int(dict(attrs).get("colspan") or 1)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


class _Balance(HTMLParser):
    """Checks that every non-void element is closed in order; collects the problems."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        if dict(attrs).get("id"):
            self.ids.append(dict(attrs)["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag of void element </{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def row_of(table: list[list[str]], label: str) -> list[str]:
    rows = [r for r in table if r and r[0].startswith(label)]
    assert len(rows) == 1, (label, [r[0] for r in table])
    return rows[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def image_sources(page: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r"<img src='([^']+)'", page)]


# --- the page as HTML ----------------------------------------------------------------------------------------------


def test_stage_result_log_and_atomic_replacement(built):
    root, result, logs, _, page = built
    assert result.stage == "report" and result.version == "2" == report.VERSION
    assert result.artifacts == [Path("reports")]
    figures = image_sources(page)
    assert logs == [f"report: wrote reports/index.html with {len(figures)} figures"]
    assert not (root / "reports" / "stale.txt").exists()  # the directory was replaced whole
    assert not list(root.glob(".reports*"))  # no temporary directory left behind
    copied = root / "reports" / "evaluation.json"
    assert copied.read_bytes() == (root / "metrics" / "evaluation.json").read_bytes()
    assert '<a href="evaluation.json">evaluation.json</a>' in page


def test_page_is_static_well_formed_html(built):
    _, _, _, _, page = built
    assert page.startswith("<!doctype html>")
    assert "<script" not in page.lower() and " on" + "load=" not in page.lower()
    for attr, value in re.findall(r"""(src|href)=['"]([^'"]*)['"]""", page):
        assert not re.match(r"(https?:)?//", value), f"external resource {attr}={value}"
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert parser.problems == [] and parser.stack == []
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids"
    for anchor in re.findall(r"href='#([^']+)'", page):
        assert anchor in parser.ids
    assert re.findall(r"<img(?![^>]*\salt='[^']+')", page) == [], "an <img> without alt text"
    grid = _Tables()
    grid.feed(page)
    assert grid.widths and all(len(set(w)) == 1 for w in grid.widths.values()), grid.widths


def test_sections_and_provenance(built):
    _, _, _, evaluation, page = built
    assert [html.unescape(re.sub("<[^>]+>", "", h)) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page)] == H2
    prov = page[page.index("<h2 id=provenance>") : page.index("<h2 id=headline>")]
    assert evaluation["params_hash"] in prov
    assert RUN_ID in prov and "child-run" not in prov  # the pipeline's parent run wins
    assert "git commit</dt><dd>unknown" in prov  # the fixture project is no git repository
    manifest = json.loads((REPO / "tests/components/reporting/data/data/prepared/manifest.json").read_text())
    for name, d in manifest["datasets"].items():
        assert f"{name} <span title='{d['sha256']}'>{d['sha256'][:12]}</span>" in prov
    assert "evaluate 2" in prov and "report 2" in prov and "calibrate 1" in prov and "meta_train 2" in prov
    assert re.search(r"generated</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC", prov)


def test_headline_table_numbers_from_the_fixture(built):
    _, _, _, evaluation, page = built
    table = tables(page)["headline-table"]
    assert [r[0].split(" (")[0].split(" + ")[0] for r in table[1:]] == ["learned", "learned", "Adam", "SGD"]
    n_tasks = len(evaluation["tasks"])
    for name, label in zip(ORDER, ["learned (small_fc_lopt)", "learned + LGL2O guard", "Adam (tuned LR)", "SGD"]):
        a = evaluation["aggregate"][name]
        row = row_of(table, label)
        assert row[1] == ci(a["speedup_iqm"]), (name, row)
        assert row[2] == ci(a["final_loss_ratio_iqm"]), (name, row)
        if name == "adam":
            assert row[3] == "reference"
        else:
            wins = round(a["beats_adam_fraction"] * n_tasks)
            assert row[3] == f"{wins}/{n_tasks} ({a['beats_adam_fraction']:.0%})"
        assert row[4].startswith(f"{round(a['beats_all_fraction'] * n_tasks)}/{n_tasks} ")
        assert row[5] == f"{a['diverged_runs']}/{a['total_runs']}"
        assert row[6] == (f"{100 * a['fallback_rate']:.1f}%" if a["fallback_rate"] is not None else EN_DASH)
        assert row[7] == f"{100 * a['mean_test_acc']:.1f}%"
    # concrete values of this fixture, so that a silent change of the format shows up
    assert row_of(table, "learned (small_fc_lopt)")[1] == "0.031 [0.027, 0.037]"
    assert row_of(table, "learned + LGL2O guard")[6] == "98.8%"
    assert row_of(table, "Adam")[4] == "2/3 (67%)"
    # whole CI below 1: marked as worse than tuned Adam
    assert re.search(r"<td class='bad'>0\.031 <span class=muted>", page)


def test_stability_section(built):
    _, _, _, evaluation, page = built
    table = tables(page)["stability-table"]
    assert len(table) == 1 + 3  # learned, guarded and tuned Adam have long-horizon runs, SGD + momentum not
    for name, label in zip(ORDER[:3], ["learned (", "learned + LGL2O", "Adam"]):
        a = evaluation["aggregate"][name]
        row = row_of(table, label)
        assert row[2] == ci(a["long_final_loss_ratio_iqm"])
        assert row[4] == f"{a['long_diverged_runs']}/{a['total_runs']}"
    guarded = evaluation["aggregate"]["guarded"]
    assert row_of(table, "learned + LGL2O")[3].startswith(f"{round(guarded['long_beats_adam_fraction'] * 3)}/3")
    assert row_of(table, "learned + LGL2O")[5] == f"{100 * guarded['long_fallback_rate']:.1f}%"
    per_task = tables(page)["stability-task-table"]
    long = evaluation["tasks"]["digits_mlp"]["optimizers"]["learned"]["long"]
    seeds = long["final_loss_ratio_per_seed"]
    learned_rows = [r for r in per_task if r[0].startswith("learned (")]
    assert learned_rows[0][5] == ratio(sum(seeds) / len(seeds))
    assert "long_horizon.png" in page


def test_per_task_table(built):
    _, _, _, evaluation, page = built
    table = tables(page)["task-table"]
    groups = [r[0] for r in table if len(r) == 1]
    assert [g.split(" ")[0] for g in groups] == list(evaluation["tasks"])
    assert groups[0] == "digits_mlp (40 steps, 80 at 2\u00d7; baselines tuned on val loss)"
    first = table[table.index([groups[0]]) + 1 : table.index([groups[1]])]
    rows = evaluation["tasks"]["digits_mlp"]["optimizers"]
    for name, row in zip(ORDER, first):
        r = rows[name]
        acc = r["final_test_acc"]
        assert row[4] == f"{100 * acc['mean']:.3g} \u00b1 {100 * acc['std']:.2g}"
        assert row[5] == f"{ratio(r['speedup'])}\u00d7"
        assert row[6] == ratio(r["final_loss_ratio"])
        assert row[9] == f"{r['diverged_seeds']}/2"
    learned, guarded, adam, sgdm = first
    assert learned[7] == EN_DASH and learned[8] == EN_DASH  # no learning rate, no guard
    assert guarded[7] == "0.01 (guard)"
    assert guarded[8] == f"{100 * rows['guarded']['fallback_fraction']['mean']:.1f}%"
    assert adam[7] == f"{rows['adam']['learning_rate']:.3g}" and sgdm[7] == f"{rows['sgdm']['learning_rate']:.3g}"
    lr = tables(page)["lr-adam"]
    assert lr[0][2:] == [f"lr {v:.3g}" for v in evaluation["lr_grid"]] + ["chosen"]
    scores = [e["tuning_score"] for e in rows["adam"]["lr_grid"]]
    assert row_of(lr, "digits_mlp")[2:-1] == [f"{s:.3g}" for s in scores]


def test_figures_exist_and_are_sensible_pngs(built):
    root, _, _, evaluation, page = built
    sources = image_sources(page)
    expected = {"aggregate.png", "profile.png", "speedup.png", "long_horizon.png", "meta_training.png"}
    expected |= {f"curves_{t}.png" for t in evaluation["tasks"]}
    assert set(sources) == expected and len(sources) == len(expected)
    for src in sources:
        path = root / "reports" / src
        width, height = png_size(path)
        assert 500 <= width <= 2500 and 250 <= height <= 2000, (src, width, height)
        assert path.stat().st_size > 10_000, src
    assert sorted(p.name for p in (root / "reports").iterdir()) == sorted(expected | {"index.html", "evaluation.json"})


# --- the page in a browser -----------------------------------------------------------------------------------------


def test_page_in_headless_chromium(built, tmp_path):
    root, _, _, evaluation, page = built
    check = open_page(root / "reports" / "index.html", tmp_path / "report.png")
    assert check.problems == []
    assert check.title == tiny_params().report.title
    assert check.h2 == H2
    assert len(check.images) == len(image_sources(page)) and all(i["natural_width"] > 300 for i in check.images)
    assert all(i["alt"] for i in check.images)
    assert check.screenshot.stat().st_size > 10_000
    assert EN_DASH in check.text and "\u2265" not in check.text.split("Per-task results")[1].split("Learning")[0]
    assert evaluation["params_hash"] in check.text


# --- variants --------------------------------------------------------------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_horizon_multiplier_one_missing_metrics_divergence_lower_bounds_and_grid_edges(tmp_path, monkeypatch):
    """No long-horizon runs: no stability section; missing metrics, divergence, lower bounds and grid edges shown."""
    root = make_project(tmp_path / "project")

    def edit(doc):
        doc["horizon_multiplier"] = 1
        for a in doc["aggregate"].values():
            for k in [k for k in a if k.startswith("long_")]:
                del a[k]
        for task, summary in doc["tasks"].items():
            summary["long_num_steps"] = None
            for row in summary["optimizers"].values():
                row["long"] = None
                if task == "mnist_mlp_deep":  # as for a regression task: no accuracy
                    row["final_test_acc"] = row["final_train_acc"] = row["final_val_acc"] = None
        doc["tasks"]["digits_mlp"]["optimizers"]["guarded"]["lower_bound"] = True
        doc["tasks"]["digits_mlp"]["optimizers"]["sgdm"]["lr_at_grid_edge"] = True
        # the learned optimizer diverges on one task (both seeds): NaN losses, speedup 0
        nan = {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
        row = doc["tasks"]["ft_mnist_to_digits_mlp"]["optimizers"]["learned"]
        row.update(diverged_seeds=2, speedup=0.0, speedup_per_seed=[0.0, 0.0], final_loss_ratio=0.0)
        row.update(final_loss_ratio_per_seed=[0.0, 0.0], final_train_loss=nan, final_test_loss=nan, final_test_acc=nan)
        doc["aggregate"]["learned"].update(diverged_runs=2)
        doc["aggregate"]["learned"]["speedup_iqm"].update(value=0.0, ci_low=0.0)
        doc["aggregate"]["learned"]["final_loss_ratio_iqm"]["ci_high"] = float("inf")

    _edit_json(root / "metrics" / "evaluation.json", edit)
    for curves in (root / "metrics" / "curves").glob("*.json"):

        def drop_long(doc, name=curves.stem):
            doc["long"] = None
            if name == "ft_mnist_to_digits_mlp":
                smoothed = doc["optimizers"]["learned"]["batch_loss_smoothed"]["mean"]
                smoothed[20:] = [float("inf") if i % 2 else float("nan") for i in range(len(smoothed) - 20)]
            if name == "mnist_mlp_deep":
                for c in doc["optimizers"].values():
                    for k in ("test_acc", "train_acc", "val_acc"):
                        c.pop(k, None)

        _edit_json(curves, drop_long)
    _, logs = build_report(root, monkeypatch, MLFLOW_RUN_ID="child-run")
    page = (root / "reports" / "index.html").read_text(encoding="utf-8")
    assert "Stability" not in page and not (root / "reports" / "long_horizon.png").exists()
    assert "stability-table" not in page and "No long-horizon runs" in page
    assert logs == [f"report: wrote reports/index.html with {len(image_sources(page))} figures"]
    assert "MLflow run</dt><dd>child-run" in page  # no parent run: the stage's own
    table = tables(page)["task-table"]
    start = next(i for i, r in enumerate(table) if r[0].startswith("mnist_mlp_deep ("))
    assert [r[4] for r in table[start + 1 : start + 5]] == [EN_DASH] * 4  # no test accuracy
    headline = row_of(tables(page)["headline-table"], "learned (")
    assert headline[5] == "2/6" and "<span class=warn>2/6</span>" in page
    assert headline[1].startswith("0.00 [0.00, ") and headline[2].endswith(", \u221e]")
    start = next(i for i, r in enumerate(table) if r[0].startswith("ft_mnist_to_digits_mlp ("))
    diverged = table[start + 1]
    assert diverged[0].startswith("learned (") and diverged[1] == diverged[3] == diverged[4] == EN_DASH
    assert diverged[5] == "0.00\u00d7" and diverged[9] == "2/2"
    guarded = json.loads((root / "metrics/evaluation.json").read_text())["tasks"]["digits_mlp"]["optimizers"]["guarded"]
    assert f"&ge;&thinsp;{ratio(guarded['speedup'])}&times;" in page
    assert "grid edge" in row_of(tables(page)["lr-sgdm"], "digits_mlp")[-1]

    check = open_page(root / "reports" / "index.html", tmp_path / "report.png")
    assert check.problems == []
    assert check.h2 == [h for h in H2 if not h.startswith("Stability")]
    assert "\u2265" in check.text


def test_without_an_mlflow_run(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    for var in report.MLFLOW_RUN_ENV:
        monkeypatch.delenv(var, raising=False)
    prov = report.provenance(root, json.loads((root / "metrics" / "evaluation.json").read_text()))
    assert prov["mlflow_run_id"] == "unknown (run outside l2o run)"
    assert prov["component_versions"]["report"] == "2"
    assert set(prov["data_hashes"]) == {"digits", "fashion_mnist", "mnist"}
