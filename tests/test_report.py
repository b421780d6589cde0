"""Results tables: row-by-row CSV with a provenance sidecar."""

from __future__ import annotations

import json

import pytest

from mendlab.experiments import report


def test_rows_land_as_they_come_and_the_sidecar_says_how(tmp_path):
    path = tmp_path / "results" / "t.csv"
    table = report.ResultsTable(path, report.provenance("mendlab compare --seeds 0", "ci", [0], algs="mend"))
    side = json.loads(report.sidecar_of(path).read_text())
    assert side["complete"] is False and side["rows"] == 0 and side["command"] == "mendlab compare --seeds 0"
    table.add({"alg": "mend", "es": 0.5, "dd": None})
    frame, side = report.load(path)
    assert list(frame.columns) == ["alg", "es", "dd"] and len(frame) == 1 and frame["es"][0] == 0.5
    assert side["rows"] == 1 and side["complete"] is False  # a cut run still says what it holds
    table.add({"alg": "ft", "es": 0.25, "dd": 0.1})
    table.close()
    frame, side = report.load(path)
    assert list(frame["alg"]) == ["mend", "ft"] and side["complete"] is True
    assert {"commit", "profile", "seeds", "wall_seconds", "torch"} <= set(side) and side["seeds"] == [0]


def test_table_refuses_other_columns_and_missing_sidecars(tmp_path):
    table = report.ResultsTable(tmp_path / "t.csv", {})
    table.add({"a": 1})
    with pytest.raises(ValueError, match="columns"):
        table.add({"b": 1})
    with pytest.raises(ValueError, match=".csv"):
        report.ResultsTable(tmp_path / "t.txt", {})
    (tmp_path / "hand.csv").write_text("a\n1\n")
    with pytest.raises(FileNotFoundError, match="provenance"):
        report.load(tmp_path / "hand.csv")


def test_command_line_quotes_arguments():
    assert report.command_line(["/x/bin/mendlab", "compare", "--setup", "tiny-bert:claim", "a b"]) == \
        "mendlab compare --setup tiny-bert:claim 'a b'"


def test_load_takes_a_table_name_in_the_repository_results(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    table = report.ResultsTable(tmp_path / "mine.csv", {"command": "mendlab compare"})
    table.add({"a": 1})
    table.close()
    frame, prov = report.load("mine")
    assert frame["a"].tolist() == [1] and prov["command"] == "mendlab compare"


def test_results_is_the_repository_folder():
    assert report.RESULTS.name == "results" and (report.RESULTS.parent / "pyproject.toml").exists()


def test_a_gzipped_table_is_written_in_members_and_loads_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "GZ_FLUSH_ROWS", 3)
    path = tmp_path / "long.csv.gz"
    table = report.ResultsTable(path, {"command": "mendlab sequential"})
    for i in range(7):
        table.add({"step": i, "es": i / 10})
    assert json.loads(report.sidecar_of(path).read_text())["rows"] == 5  # header + 2 rows, then 3 rows, flushed
    table.close()
    frame, side = report.load(path)
    assert list(frame["step"]) == list(range(7)) and side["rows"] == 7 and side["complete"]
    assert report.sidecar_of(path).name == "long.csv.gz.provenance.json"
