"""The CLI: help for every command, and clear errors when a job runs before its inputs exist."""
from __future__ import annotations

import pytest

from shoprec.cli import build_parser, main

COMMANDS = ("generate", "validate", "features", "materialize", "train", "index", "serve", "query", "demo")


def test_every_command_has_help(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: shoprec" in capsys.readouterr().out
    assert set(COMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_job_without_its_inputs_names_the_command_to_run(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path), "features"]) == 2
    err = capsys.readouterr().err
    assert "shoprec validate" in err and str(tmp_path) in err


def test_generate_and_validate_from_the_cli(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path), "generate", "--preset", "tiny"]) == 0
    assert main(["--workspace", str(tmp_path), "validate"]) == 0
    out = capsys.readouterr().out
    assert "quarantine.csv" in out and (tmp_path / "data/clean/events.parquet").exists()


@pytest.mark.slow
def test_query_covers_every_rpc_against_a_real_server(private_server, trained_workspace, capsys):
    import pandas as pd

    events = pd.read_parquet(trained_workspace.clean_dir / "events.parquet")
    user, item, other = events["user_id"].iloc[0], events["item_id"].iloc[0], events["item_id"].iloc[1]
    at = ["--address", private_server.address]

    def query(*argv: str) -> str:
        assert main(["query", *argv, *at]) == 0
        return capsys.readouterr().out

    assert "index_version" in query("info")
    page = query("recommend", "--user", user, "--k", "4", "--surface", "product", "--viewed", item)
    assert f"user {user}" in page and page.count("\n") >= 4 + 3  # title, header, rule, 4 rows
    assert f"similar to {item}" in query("similar", "--item", item, "--k", "3", "--same-category")
    assert f"cart ['{item}', '{other}'] of {user}" in query("cart", "--item", item, "--item", other, "--user", user)
    assert "churn risk" in query("insights", "--user", user)
    from serving.client import RecommenderClient

    with RecommenderClient(private_server.address) as client:
        bought = client.recommend(user, k=5).items[0].item_id
    assert bought in query("recommend", "--user", user, "--k", "5")
    recorded = query("event", "--user", user, "--item", bought, "--event-type", "purchase", "--price", "12.5")
    assert "True" in recorded and "purchase" in recorded
    assert bought not in query("recommend", "--user", user, "--k", "5")  # the purchase reached the next page


@pytest.mark.slow
def test_query_reports_a_server_error_in_one_line(private_server, capsys):
    assert main(["query", "similar", "--item", "no-such-item", "--address", private_server.address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shoprec query: NOT_FOUND: item_id:") and "Traceback" not in err
