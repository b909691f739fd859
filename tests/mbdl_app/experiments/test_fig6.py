"""`mbdl reproduce fig6 --quick`: curves, reference lines, targets and files from a quick CORONA."""

from __future__ import annotations

import csv
import json

from engines.imaging.corona import CORONA
from mbdl_app.experiments.fig6 import run_fig6
from mbdl_app.training.artifact import write_artifact


def untrained_corona(directory):
    """A clutter-suppression artifact of CORONA at its model-based initial values (no training)."""
    card = {"name": "corona-untrained", "task": "clutter-suppression", "family": "unfolded",
            "architecture": {"name": "corona", "kwargs": {"n_layers": 10}}, "input": {"window": 20},
            "output": {}, "training": {}, "metrics": {}}
    return write_artifact(directory, CORONA(), card)


def test_quick_fig6_writes_curves_targets_and_png(tmp_path):
    corona = untrained_corona(tmp_path / "corona")
    report = run_fig6(tmp_path / "fig6", quick=True, corona=str(corona), resnet=str(tmp_path / "none"))
    r = report["results"]
    assert len(r["rpca_fista"]["mse_per_iteration"]) == 20
    assert len(r["corona"]["mse_per_layer"]) == 10 and r["corona"]["cpu_s_per_window"] > 0
    assert r["resnet"]["status"] == "not trained"
    assert r["svd_filter"]["k"] in (1, 2, 3, 4)
    assert set(r["targets"]) >= {"corona_below_fista_at_50", "corona_below_svd", "speedup_vs_fista"}
    saved = json.loads((tmp_path / "fig6" / "fig6.json").read_text())
    assert saved["results"]["corona"]["mse"] == r["corona"]["mse"]
    rows = list(csv.DictReader(open(tmp_path / "fig6" / "fig6.csv")))
    assert {row["method"] for row in rows} == {"rpca-fista", "corona", "svd-filter", "zero"}
    assert (tmp_path / "fig6" / "fig6.png").stat().st_size > 10_000
