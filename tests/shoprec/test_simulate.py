"""The shop simulator on the tiny shop: real serving pipeline, hidden customers, A/B/n report."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feature_repo.errors import ConfigError
from shoprec.simulate import SimulationConfig, line_plot_svg, simulate


@pytest.fixture(scope="module")
def run(trained_workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    cfg = SimulationConfig(days=6, seeds=(0, 1), return_days=2, max_customers=200,
                           policies=("random", "popularity", "pipeline_dcn", "pipeline_retention", "oracle"))
    return simulate(trained_workspace, cfg, out, say=lambda _: None), out


@pytest.mark.slow
def test_policies_order_as_the_hidden_truth_says(run):
    """Measured on tiny (200 customers, 6 days, 2 seeds): conversion per impression about
    .009 random, .014 popularity, .03 pipeline, .09 oracle."""
    results, _ = run
    conv = {p: s["conversion_per_impression"]["mean"] for p, s in results["summary"].items()}
    assert conv["oracle"] > conv["pipeline_dcn"] > conv["popularity"] > conv["random"], conv
    assert results["summary"]["random"]["coverage"]["mean"] > results["summary"]["popularity"]["coverage"]["mean"]
    # The retention policy changed the mix for some visits (customers at churn risk >= 0.3), not all.
    assert 0 < results["summary"]["pipeline_retention"]["retention_share"]["mean"] < 1
    assert results["summary"]["pipeline_dcn"]["retention_share"]["mean"] == 0
    t = results["targets"]
    assert t["policy"] in ("pipeline_dcn", "pipeline_retention") and set(t["met"]) == {"2x_popularity", "70pct_oracle", "return_above_popularity"}


@pytest.mark.slow
def test_the_report_has_the_table_plot_and_numbers(run):
    results, out = run
    report = (out / "report.md").read_text()
    assert "pipeline_dcn" in report and "daily_conversion.svg" in report
    assert (out / "daily_conversion.svg").read_text().startswith("<svg")
    saved = json.loads((out / "simulation.json").read_text())
    assert saved["summary"].keys() == results["summary"].keys() and len(saved["daily"]["oracle"]) == 6


@pytest.mark.slow
def test_same_seed_same_result(trained_workspace, tmp_path, run):
    """Common random numbers: a policy replayed with the same seed gives the same numbers."""
    results, _ = run
    cfg = SimulationConfig(days=6, seeds=(0, 1), return_days=2, max_customers=200, policies=("popularity",))
    again = simulate(trained_workspace, cfg, tmp_path, say=lambda _: None)
    assert again["summary"]["popularity"] == results["summary"]["popularity"]


@pytest.mark.parametrize("kwargs, field", [({"policies": ("magic",)}, "policies"),
                                           ({"days": 3, "return_days": 3}, "return_days")])
def test_bad_settings_name_the_field(tmp_path, kwargs, field):
    from feature_repo.workspace import Workspace

    with pytest.raises(ConfigError, match=field):
        simulate(Workspace.at(tmp_path), SimulationConfig(**kwargs), tmp_path)


def test_svg_plot_has_one_line_per_series():
    svg = line_plot_svg({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]}, "t")
    assert svg.count("<polyline") == 2 and svg.endswith("</svg>")
    assert ">day<" in svg and ">3<" in svg  # the x axis: days 1..3


@pytest.mark.slow
def test_nightly_jobs_feed_the_days_events_into_the_batch_features(trained_workspace, tmp_path, monkeypatch):
    """With nightly jobs the pipeline world's clean history grows by the simulated events and
    the server reloads the rebuilt item features."""
    from shoprec import simulate as sim

    seen = []
    original = sim.nightly_jobs

    def spy(rec, events, shop):
        before = rec.models.fingerprint
        original(rec, events, shop)
        clean = pd.read_parquet(rec.ws.clean_dir / "events.parquet")
        seen.append((len(events), int(clean["session_id"].str.startswith("sim-").sum()),
                     before != rec.models.fingerprint))

    monkeypatch.setattr(sim, "nightly_jobs", spy)
    cfg = SimulationConfig(days=3, seeds=(0,), return_days=1, max_customers=100, policies=("pipeline_dcn",),
                           nightly=True)
    simulate(trained_workspace, cfg, tmp_path, say=lambda _: None)
    assert len(seen) == 3
    assert [s[1] for s in seen] == list(np.cumsum([s[0] for s in seen]))  # every day's events, once
    assert all(s[2] for s in seen)  # each night's features were reloaded
