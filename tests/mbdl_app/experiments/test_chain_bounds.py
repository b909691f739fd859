"""The chained-ULM bounds (issue 15 part 1): oracle separators under fig7's protocol, quick size."""

import json

from mbdl_app.experiments.chain_bounds import WINDOWS, run


def test_quick_bounds_score_every_oracle_and_the_projection_costs_the_bubbles(tmp_path):
    out = tmp_path / "bounds.json"
    rows = run(out, quick=True, log=lambda _: None)
    assert [r["bound"] for r in rows] == ["clean"] + [b for b in ("subspace", "ghost", "masked", "rpca")
                                                      for _ in WINDOWS]
    assert all(0.0 <= r["jaccard"] <= 1.0 for r in rows)
    clean = rows[0]["jaccard"]
    assert clean > 0.5  # the perfect clutter filter: ulm-lista's own regime
    # projecting the window off even the TRUE tissue subspace costs the bubbles (their ghosts)
    assert all(r["jaccard"] < clean - 0.1 for r in rows if r["bound"] in ("subspace", "ghost"))
    assert json.loads(out.read_text())["rows"] == rows
