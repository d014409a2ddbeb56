"""The command line answers a user's mistake in one line naming what is allowed; a traceback only with --debug."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vlselect.cli import UsageError, main
from vlselect.io import write_parquet

VLSELECT = str(Path(sys.executable).with_name("vlselect"))


@pytest.fixture()
def manifest(tmp_path) -> str:
    path = tmp_path / "manifest.parquet"
    write_parquet(pd.DataFrame({"sample_id": ["a", "b"], "image_path": "x", "image_sha256": "0",
                                "instruction": "Describe.", "answer": ["Short.", "A longer answer."],
                                "source": "test"}), path)
    return str(path)


def message(argv: list[str]) -> str:
    """The one-line message main() exits with."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert isinstance(exit_info.value.code, str)  # a message, not a bare status
    return exit_info.value.code


def test_valid_params_run_the_step(tmp_path, manifest):
    out = tmp_path / "length.parquet"
    assert main(["score-length", "--manifest", manifest, "--out", str(out),
                 "--params", json.dumps({"unit": "chars", "max_len": 100})]) == 0
    assert pd.read_parquet(out)["score"].tolist() == [0.6, 1.6]


def test_unknown_params_key_names_the_allowed_keys(tmp_path, manifest):
    msg = message(["score-gpt", "--manifest", manifest, "--out", str(tmp_path / "g.parquet"), "--cache-dir", "c",
                   "--params", json.dumps({"max_usdd": 3})])
    assert msg.startswith("vlselect score-gpt: unknown 'max_usdd' in --params; allowed keys: manifest, out, ")
    assert "max_usd," in msg and "max_failed_fraction" in msg and "\n" not in msg


def test_unknown_option_is_named_as_an_option(tmp_path, manifest):
    msg = message(["score-length", "--manifest", manifest, "--out", str(tmp_path / "l.parquet"), "--max-length", "9"])
    assert "unknown --max-length; allowed keys: manifest, out, unit, max_len" in msg


@pytest.mark.parametrize("params, expected", [
    ({"max_failed_fraction": 2}, "max_failed_fraction=2 is invalid (scoring.gpt.max_failed_fraction): 2 is greater "
                                 "than the maximum of 1"),
    ({"on_failure": "halt"}, "on_failure=\"halt\" is invalid (scoring.gpt.on_failure): 'halt' is not one of"),
    ({"concurrency": "8"}, "concurrency=\"8\" is invalid (scoring.gpt.concurrency): '8' is not of type 'integer'"),
])
def test_values_are_checked_against_the_config_schema(tmp_path, manifest, params, expected):
    msg = message(["score-gpt", "--manifest", manifest, "--out", str(tmp_path / "g.parquet"), "--cache-dir", "c",
                   "--params", json.dumps(params)])
    assert expected in msg
    assert not (tmp_path / "g.parquet").exists()  # stopped before the step ran


def test_missing_argument_bad_json_and_bad_number(tmp_path, manifest):
    assert message(["score-length", "--out", "x"]) == ("vlselect score-length: missing --manifest "
                                                       "(--debug shows the traceback)")
    assert "--params is not valid JSON" in message(["score-length", "--manifest", manifest, "--out", "x",
                                                    "--params", "{unit: chars}"])
    assert "option --shard takes int, got 'one'" in message(["score-length", "--manifest", manifest, "--out", "x",
                                                             "--shard", "one"])


def test_a_steps_own_errors_are_one_line(tmp_path, manifest):
    missing = tmp_path / "nowhere.parquet"
    msg = message(["score-length", "--manifest", str(missing), "--out", str(tmp_path / "l.parquet")])
    assert msg.startswith("vlselect score-length: ") and str(missing) in msg
    msg = message(["select", "--method", "best", "--manifest", manifest, "--scores", "s.parquet", "--clusters", "c",
                   "--out-dir", str(tmp_path / "sel")])
    assert msg.startswith("vlselect select: unknown selection method 'best'; choose one of selector, ")
    assert msg.endswith(" (--debug shows the traceback)") and "\n" not in msg


def test_debug_raises_the_error_itself(tmp_path, manifest):
    with pytest.raises(UsageError, match="unknown 'max_usdd'"):
        main(["score-gpt", "--manifest", manifest, "--out", "g", "--cache-dir", "c", "--debug",
              "--params", json.dumps({"max_usdd": 3})])


def test_no_traceback_in_the_terminal_unless_debug(tmp_path, manifest):
    argv = [VLSELECT, "score-length", "--manifest", manifest, "--out", str(tmp_path / "l.parquet"),
            "--params", json.dumps({"unitt": "chars"})]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "vlselect score-length: unknown 'unitt' in --params; allowed keys: manifest, out, unit, max_len, tokenizer, "
        "repeats, shard, n_shards (--debug shows the traceback)"]
    debug = subprocess.run(argv + ["--debug"], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr
