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
