"""The report stage on the real outputs of a tiny pipeline run, checked as HTML and in headless Chromium.

The project is :mod:`report_fixture`'s copy of a ``params/tiny.yaml`` run (3 tasks, 2 seeds; the learned optimizer,
HUB, inverted HUB, LGL2O, GL2O, tuned Adam and SGD + momentum; horizon multiplier 2, Adam's grid at 4x). Expected
numbers are computed here from that fixture's ``evaluation.json``; the browser checks need ``/usr/bin/chromium``
(``make test`` installs it).
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
from components.stages.common import StageContext
from components.stages.params import PipelineParams
from tests.browser import open_page
from tests.components.reporting.report_fixture import make_project

REPO = Path(__file__).resolve().parents[3]
RUN_ID = "0123456789abcdef0123456789abcdef"
H2 = [
    "Provenance",
    "Headline: learned optimizers vs tuned baselines",
    "The seed papers' claims, side by side",
    "In and out of the meta-training distribution",
    "Stability at 2\u00d7 horizon",
    "Per-task results",
    "Learning curves",
    "Learning-rate tuning",
    "Meta-training",
    "Safeguard (LGL2O; also GL2O's guard and HUB's hand-designed part)",
    "Params",
]
ORDER = ["learned", "hub", "hub_inverted", "lgl2o", "gl2o", "adam", "sgdm"]
LABEL = {
    "learned": "learned (small_fc_lopt)",
    "hub": "HUB (learned + Adam)",
    "hub_inverted": "inverted HUB",
    "lgl2o": "LGL2O (loss guard)",
    "gl2o": "GL2O (fixed-point guard)",
    "adam": "Adam (tuned LR)",
    "sgdm": "SGD + momentum (tuned LR)",
}
EN_DASH = "\u2013"
VOID = {"meta", "link", "img", "br", "hr", "input", "col", "source", "wbr", "area", "base", "embed", "track"}


def tiny_params() -> PipelineParams:
    return PipelineParams(**yaml.safe_load((REPO / "params" / "tiny.yaml").read_text()))


def build_report(root: Path, monkeypatch: pytest.MonkeyPatch, run_id: str | None) -> tuple[object, list[str]]:
    """The report stage with ``run_id`` in its context; the environment names another run, which must not show."""
    for var in ("L2O_MLFLOW_RUN_ID", "L2O_MLFLOW_PARENT_RUN_ID", "MLFLOW_RUN_ID"):
        monkeypatch.setenv(var, "env-run")
    logs: list[str] = []
    result = report.run(tiny_params(), root, StageContext(log=logs.append, run_id=run_id))
    return result, logs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of the unmodified fixture (with a stale ``reports/`` to be replaced), built once."""
    root = make_project(tmp_path_factory.mktemp("report") / "project")
    (root / "reports").mkdir()
    (root / "reports" / "stale.txt").write_text("from an earlier run")
    with pytest.MonkeyPatch.context() as mp:
        result, logs = build_report(root, mp, RUN_ID)
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
    assert result.stage == "report" and result.version == "3" == report.VERSION
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
    # nothing that differs between identical runs: the run id, commit and date go to the run log
    assert RUN_ID not in prov and "env-run" not in prov
    assert "git commit</dt>" not in prov and "generated</dt>" not in prov
    run_log = json.loads((built[0] / ".l2o" / "runs" / "report.json").read_text())
    assert run_log["mlflow_run_id"] == RUN_ID and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", run_log["date"])
    manifest = json.loads((REPO / "tests/components/reporting/data/data/prepared/manifest.json").read_text())
    for name, d in manifest["datasets"].items():
        assert f"{name} <span title='{d['sha256']}'>{d['sha256'][:12]}</span>" in prov
    assert "evaluate 3" in prov and "report 3" in prov and "calibrate 2" in prov and "meta_train 2" in prov


def test_headline_tables_one_per_rule_numbers_from_the_fixture(built):
    _, _, _, evaluation, page = built
    table = tables(page)["headline-table"]
    tags = {"learned": "learned", "hub": "hybrid", "hub_inverted": "hybrid", "lgl2o": "safeguarded"}
    tags |= {"gl2o": "safeguarded", "adam": "reference", "sgdm": ""}
    assert [r[0] for r in table[1:]] == [LABEL[o] + tags[o] for o in ORDER]
    n_tasks = len(evaluation["tasks"])
    for name in ORDER:
        a = evaluation["aggregate"]["train"][name]
        row = row_of(table, LABEL[name])
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
    # concrete values of this fixture, so that a silent change of the format shows up
    assert row_of(table, LABEL["learned"])[1] == "0.03 [0.026, 0.036]"
    assert row_of(table, LABEL["lgl2o"])[6] == "98.8%"
    assert row_of(table, "Adam")[1] == "0.99 [0.91, 1.05]"  # tuned Adam against its own envelope: about 1
    # whole CI below 1: marked as worse than tuned Adam
    assert re.search(r"<td class='bad'>0\.03 <span class=muted>", page)
    # the generalisation table: validation-rule numbers, labelled with its rule
    gen = tables(page)["generalisation-table"]
    for name in ORDER:
        a = evaluation["aggregate"]["validation"][name]
        row = row_of(gen, LABEL[name])
        assert row[1] == f"{100 * a['mean_test_acc']:.1f}%"
        assert row[5] == f"{a['algoperf_score']:.2g}"
        if name != "adam":
            assert row[3].startswith(f"{round(a['test_beats_adam_fraction'] * n_tasks)}/{n_tasks}")
    headline = page[page.index("<h2 id=headline>") : page.index("<h2 id=claims>")]
    assert headline.count("train rule</span>") == 1 and headline.count("validation rule</span>") == 1


def test_claim_tables_put_the_seed_numbers_beside_ours(built):
    _, _, _, evaluation, page = built
    claims = evaluation["aggregate"]["claims"]
    t = tables(page)
    celo = t["claim-celo-table"]
    assert "Celo: 1.86" in celo[0][1] and "Celo: 1.20" in celo[0][2]
    assert [r[0] for r in celo[1:]] == [LABEL[o] for o in ORDER[:5]]
    assert row_of(celo, LABEL["learned"])[1] == ci(claims["celo"]["rows"]["learned"]["speedup_iqm"])
    hub = t["claim-hub-table"]
    assert "HUB: 94% (16/17)" in hub[0][3]
    for o in ("hub", "hub_inverted"):
        r = claims["hub"]["rows"][o]
        assert row_of(hub, LABEL[o])[1].startswith(f"{round(r['beats_learned_fraction'] * 3)}/3")
        assert row_of(hub, LABEL[o])[3].startswith(f"{round(r['beats_all_fraction'] * 3)}/3")
    guard = t["claim-lgl2o-table"]
    assert [r[0] for r in guard[1:]] == [
        LABEL["learned"],
        LABEL["lgl2o"],
        LABEL["gl2o"],
        "guard alone (adam at its calibrated rate)",
    ]
    lg = claims["lgl2o"]["rows"]["lgl2o"]
    assert row_of(guard, LABEL["lgl2o"])[2] == f"{100 * lg['worst_excess_over_guard']:.1f}%"
    assert "star" in claims and "claim-star-table" in t and "claim-algoperf-table" in t
    assert "Seed paper:" in page


def test_distribution_section_is_computed_from_the_specs(built):
    _, _, _, evaluation, page = built
    table = tables(page)["distribution-table"]
    for task, summary in evaluation["tasks"].items():
        rel = summary["relation"]
        row = row_of(table, task)
        assert row[1] == ("in distribution" if rel["in_distribution"] else "out of distribution")
        assert row[2] == (", ".join(rel["ood_axes"]) or EN_DASH)
    # tiny evaluates 40 steps past meta-training unrolls of at most 30: every task is out by horizon
    assert all("horizon" in s["relation"]["ood_axes"] for s in evaluation["tasks"].values())
    assert "out_of_distribution-train-table" in tables(page) and "In distribution</h3><p class=note>No task." in page


def test_stability_section(built):
    _, _, _, evaluation, page = built
    table = tables(page)["stability-table"]
    long = evaluation["aggregate"]["long"]
    assert [r[0].split(" ")[0] for r in table[1:]] == ["learned", "HUB", "LGL2O", "GL2O", "Adam"]
    for name in ("learned", "hub", "lgl2o", "gl2o", "adam"):
        a = long[name]
        row = row_of(table, LABEL[name])
        assert row[2] == ci(a["final_loss_ratio_iqm"])
        assert row[4] == f"{a['diverged_runs']}/{a['total_runs']}"
    assert row_of(table, LABEL["lgl2o"])[5] == f"{100 * long['lgl2o']['fallback_rate']:.1f}%"
    per_task = tables(page)["stability-task-table"]
    seeds = evaluation["tasks"]["digits_mlp"]["long"]["learned"]["final_loss_ratio_per_seed"]
    learned_rows = [r for r in per_task if r[0].startswith("learned (")]
    assert learned_rows[0][3] == ratio(sum(seeds) / len(seeds))
    assert "long_horizon.png" in page


def test_per_task_tables(built):
    _, _, _, evaluation, page = built
    table = tables(page)["task-table"]
    groups = [r[0] for r in table if len(r) == 1]
    assert [g.split(" ")[0] for g in groups] == list(evaluation["tasks"])
    assert groups[0] == "digits_mlp (40 steps; Adam's grid 160)"
    first = table[table.index([groups[0]]) + 1 : table.index([groups[1]])]
    rows = evaluation["tasks"]["digits_mlp"]["train"]
    for name, row in zip(ORDER, first):
        r = rows[name]
        assert row[2] == f"{ratio(r['speedup'])}\u00d7"
        assert row[3] == ratio(r["final_loss_ratio"])
        assert row[7] == f"{r['diverged_seeds']}/2"
    by = dict(zip(ORDER, first))
    assert by["learned"][5] == EN_DASH and by["learned"][6] == EN_DASH  # no learning rate, no guard
    assert by["lgl2o"][5] == "0.01 (guard)" and by["hub"][5] == "0.01 (guard)"
    assert by["lgl2o"][6] == f"{100 * rows['lgl2o']['fallback_fraction']['mean']:.1f}%"
    tuning = evaluation["tasks"]["digits_mlp"]["tuning"]
    assert by["adam"][5] == f"{tuning['adam']['train']['learning_rate']:.3g}"
    val = tables(page)["task-validation-table"]
    vfirst = val[val.index([groups[0]]) + 1 : val.index([groups[1]])]
    vrows = evaluation["tasks"]["digits_mlp"]["validation"]
    for name, row in zip(ORDER, vfirst):
        acc = vrows[name]["final_test_acc"]
        assert row[3] == f"{100 * acc['mean']:.3g} \u00b1 {100 * acc['std']:.2g}"
    assert dict(zip(ORDER, vfirst))["sgdm"][5] == f"{tuning['sgdm']['validation']['learning_rate']:.3g}"
    lr = tables(page)["lr-adam"]
    assert lr[0][3:] == [f"lr {v:.3g}" for v in evaluation["lr_grid"]] + ["chosen"]
    rules = [r[1] for r in lr[1:] if r[0] == "digits_mlp"]
    assert rules == ["train", "validation", "long"]
    train_row = next(r for r in lr[1:] if r[0] == "digits_mlp" and r[1] == "train")
    assert train_row[3:-1] == [f"{v:.3g}" for v in tuning["adam"]["train"]["scores"]]


def test_figures_exist_and_are_sensible_pngs(built):
    root, _, _, evaluation, page = built
    sources = image_sources(page)
    expected = {"aggregate.png", "profile.png", "algoperf.png", "speedup.png", "long_horizon.png", "meta_training.png"}
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
    # every method of the seed papers and each claim table with the seed's number, as rendered
    for text in ("HUB (learned + Adam)", "inverted HUB", "LGL2O (loss guard)", "GL2O (fixed-point guard)"):
        assert text in check.text
    for text in ("Celo: 1.86", "HUB: 94% (16/17)", "LGL2O vs GL2O vs their guard", "AlgoPerf score", "train rule"):
        assert text in check.text, text
    assert "validation rule" in check.text and "Out of distribution" in check.text


# --- variants --------------------------------------------------------------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_horizon_multiplier_one_missing_metrics_divergence_censoring_and_grid_edges(tmp_path, monkeypatch):
    """No long-horizon runs: no stability section; missing metrics, divergence, censoring and grid edges shown."""
    root = make_project(tmp_path / "project")

    def edit(doc):
        doc["horizon_multiplier"] = 1
        doc["aggregate"]["long"] = None
        doc["aggregate"]["claims"].pop("star")
        for task, summary in doc["tasks"].items():
            summary["long_num_steps"] = None
            summary["long"] = None
            summary["tuning"]["adam"].pop("long")
            if task == "mnist_mlp_deep":  # as for a regression task: no accuracy
                for row in summary["validation"].values():
                    row["final_test_acc"] = row["final_train_acc"] = row["final_val_acc"] = None
        digits = doc["tasks"]["digits_mlp"]
        digits["train"]["lgl2o"].update(censored=True, speedup=4.0)
        digits["tuning"]["sgdm"]["validation"]["at_edge"] = True
        digits["validation"]["sgdm"]["lr_at_grid_edge"] = True
        lg = doc["aggregate"]["train"]["lgl2o"]["speedup_iqm"]
        lg.update(lower_bound=True, ci_lower_bound=True, censored_runs=2)
        # the learned optimizer diverges on one task (both seeds): NaN losses, speedup 0
        nan = {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
        row = doc["tasks"]["ft_mnist_to_digits_mlp"]["train"]["learned"]
        row.update(diverged_seeds=2, speedup=0.0, speedup_per_seed=[0.0, 0.0], final_loss_ratio=0.0)
        row.update(final_loss_ratio_per_seed=[0.0, 0.0], final_train_loss=nan)
        doc["tasks"]["ft_mnist_to_digits_mlp"]["validation"]["learned"].update(final_test_loss=nan, final_test_acc=nan)
        doc["aggregate"]["train"]["learned"].update(diverged_runs=2)
        doc["aggregate"]["train"]["learned"]["speedup_iqm"].update(value=0.0, ci_low=0.0)
        doc["aggregate"]["train"]["learned"]["final_loss_ratio_iqm"]["ci_high"] = float("inf")

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
    _, logs = build_report(root, monkeypatch, "child-run")
    page = (root / "reports" / "index.html").read_text(encoding="utf-8")
    assert "Stability" not in page and not (root / "reports" / "long_horizon.png").exists()
    assert "stability-table" not in page and "No long-horizon runs" in page
    assert logs == [f"report: wrote reports/index.html with {len(image_sources(page))} figures"]
    assert "child-run" not in page  # the run id goes to the run log
    assert json.loads((root / ".l2o" / "runs" / "report.json").read_text())["mlflow_run_id"] == "child-run"
    val = tables(page)["task-validation-table"]
    start = next(i for i, r in enumerate(val) if r[0].startswith("mnist_mlp_deep ("))
    assert [r[3] for r in val[start + 1 : start + 8]] == [EN_DASH] * 7  # no test accuracy
    headline = row_of(tables(page)["headline-table"], "learned (")
    assert headline[5] == "2/6" and "<span class=warn>2/6</span>" in page
    assert headline[1].startswith("0.00 [0.00, ") and headline[2].endswith(", \u221e]")
    # a censored IQM is shown as a lower bound, with its CI and the count of censored runs
    lg = row_of(tables(page)["headline-table"], LABEL["lgl2o"])
    assert lg[1] == "\u2265 0.67 [\u2265 0.63, \u2265 0.74] 2 censored"  # the parser folds the thin spaces
    table = tables(page)["task-table"]
    start = next(i for i, r in enumerate(table) if r[0].startswith("ft_mnist_to_digits_mlp ("))
    diverged = table[start + 1]
    assert diverged[0].startswith("learned (") and diverged[1] == EN_DASH
    assert diverged[2] == "0.00\u00d7" and diverged[7] == "2/2"
    assert "&ge;&thinsp;4.00&times;" in page  # the censored per-task speedup
    edge_rows = [r for r in tables(page)["lr-sgdm"] if r[0] == "digits_mlp" and r[1] == "validation"]
    assert "grid edge" in edge_rows[0][-1]

    check = open_page(root / "reports" / "index.html", tmp_path / "report.png")
    assert check.problems == []
    assert check.h2 == [h for h in H2 if not h.startswith("Stability")]
    assert "\u2265" in check.text


def test_without_an_mlflow_run(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("L2O_MLFLOW_RUN_ID", "env-run")  # not read: the run comes from the stage's context
    prov = report.provenance(root, json.loads((root / "metrics" / "evaluation.json").read_text()))
    assert "mlflow_run_id" not in prov and "date" not in prov and "git_commit" not in prov
    assert prov["component_versions"]["report"] == "3"
    assert set(prov["data_hashes"]) == {"digits", "fashion_mnist", "mnist"}
