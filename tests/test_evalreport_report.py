"""report.html from the Jinja2 template: names from the config are escaped, missing test
classes are noted, and the template ships next to the module."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from emobridge.experiments import validate_config
from emobridge.experiments.report import render_report, write_report
from emobridge.experiments.results import CellKey, CellRecord, Task, aggregate
from emobridge.metrics import evaluate

CLASSES = ["anger", "happiness", "neutral", "sadness"]
EVIL = "<script>alert(1)</script>"


def _records() -> list[CellRecord]:
    # Labels with markup but no "/" (they also become file names; their validation is the
    # config's job).
    task = Task("x<script>to-bb", ("x<script>",), "bb")
    out = []
    for seed, (t, p) in enumerate((([0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 1]),
                                   ([0, 0, 1, 1], [0, 1, 1, 1]))):
        metrics = {"target": evaluate(t, p, CLASSES, n_resamples=30, seed=seed),
                   "classes": CLASSES, "history": [{"epoch": 1, "loss": 1.0},
                                                   {"epoch": 2, "loss": 0.5}],
                   "predictions": {"target": {"y_true": t, "y_pred": p}},
                   "timing": {"fit_s": 0.1, "total_s": 0.2}}
        out.append(CellRecord(CellKey(task.name, "feat", "m<script>", 0, seed), task, "ok",
                              metrics=metrics))
    failed = CellKey(task.name, "feat", "other", 0, 0)
    out.append(CellRecord(failed, task, "failed", error={"error": f"boom {EVIL}"}))
    return out


@pytest.fixture
def cfg(tmp_path: Path):
    loaded = validate_config(
        {"corpora": [{"synthetic": {"speakers_per_language": 3}}],
         "protocol": {"pairs": "leave_one_language_out"},
         "features": {"extractors": ["opensmile"]}, "methods": [{"method": "source_only"}],
         "description": f"about {EVIL} & more"},
        "exp.yaml", tmp_path, check_registries=False, output_dir=tmp_path / "run")
    loaded.report.tsne = False
    # A hostile name, set past validation: the page must still show it as text.
    return loaded.model_copy(update={"name": EVIL})


def test_report_escapes_names_and_notes_missing_classes(tmp_path: Path, cfg) -> None:
    records = _records()
    table = aggregate(records, n_resamples=30)
    run_dir = tmp_path / "run"
    out = write_report(run_dir, cfg, records, table,
                       {"classes": CLASSES, "tasks": [{"name": records[0].task.name}]})
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # title, h1
    assert "about &lt;script&gt;" in page and "&amp; more" in page
    assert "x&lt;script&gt;to-bb" in page and "m&lt;script&gt;" in page
    assert "boom &lt;script&gt;" in page  # the failed cell's error message
    # The CSS is included verbatim (not escaped).
    assert ".figs > div" in page
    # Seed 1's test set lacks two classes: said in the results table and the group.
    assert "no test utterance of: neutral, sadness" in page
    assert "seed 1: UA over present classes" in page
    assert "(test set lacks classes)" in page
    assert page.count("data:image/png;base64,") >= 3  # summary, confusion, curves
    assert (run_dir / "per_class").is_dir() and len(list((run_dir / "per_class").glob(
        "*.csv"))) == 1


def test_template_ships_with_the_package() -> None:
    import emobridge.experiments as pkg

    folder = Path(pkg.__file__).parent / "templates"
    assert (folder / "report.html").is_file() and (folder / "report.css").is_file()
    empty = {"title": "t", "description": "", "meta": [], "chance": "-",
             "results": {"columns": ["a"], "rows": [[{"text": "<b>", "num": False}]]},
             "summary_figures": [None], "failed": [], "groups": [], "data": None,
             "config_yaml": "x: <y>"}
    page = render_report(empty)
    assert "<td>&lt;b&gt;</td>" in page and "x: &lt;y&gt;" in page
    with pytest.raises(jinja2.UndefinedError, match="meta"):  # StrictUndefined: no gaps
        render_report({k: v for k, v in empty.items() if k != "meta"})
