"""Inputs read in the same exact chunks every time, bad lines reported, parts joined in order."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.jobs import files


def frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"unit": [f"u{i}" for i in range(rows)], "x": [float(i) for i in range(rows)]}
    )


def test_csv_chunks_are_exact_and_bad_lines_are_rejects(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    lines = ["unit,x"] + [f"u{i},{i}" for i in range(10)]
    lines.insert(4, "broken,1,2")  # line 5 of the file: three fields
    path.write_text("\n".join(lines) + "\n")
    chunks = list(files.read_chunks(path, "csv", 4))
    assert [len(c.frame) for c in chunks] == [4, 4, 2]
    assert list(chunks[1].frame.index) == [4, 5, 6, 7]
    assert list(chunks[0].frame["unit"]) == ["u0", "u1", "u2", "u3"]
    assert [r["line"] for c in chunks for r in c.rejects] == [5]
    assert files.estimate_rows(path, "csv") == 11


def test_ndjson_bad_lines_keep_their_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    rows = [json.dumps({"unit": f"u{i}", "x": i}) for i in range(5)]
    rows[2] = "{not json"
    rows[3] = "[1, 2]"
    path.write_text("\n".join(rows) + "\n")
    chunks = list(files.read_chunks(path, "ndjson", 2))
    assert [list(c.frame.index) for c in chunks] == [[0, 1], [], [4]]
    reasons = [r["reason"] for c in chunks for r in c.rejects]
    assert reasons[0].startswith("not valid JSON") and reasons[1] == "not a JSON object"


def test_parquet_chunks_cross_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame(10)), path, row_group_size=3)
    chunks = list(files.read_chunks(path, "parquet", 4))
    assert [list(c.frame.index) for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert files.estimate_rows(path, "parquet") == 10


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_parts_are_joined_in_order_and_removed(tmp_path: Path, fmt: str) -> None:
    output = tmp_path / f"out{files.EXTENSIONS[fmt]}"
    for index in (1, 0, 2):  # any order of writing; a rewritten part replaces the old one
        part = frame(3).assign(unit=lambda f, i=index: [f"c{i}-{u}" for u in f["unit"]])
        files.write_part(output, fmt, index, part, [{"row": index, "reason": "r"}])
    files.write_part(output, fmt, 2, frame(2).assign(unit=["c2-a", "c2-b"]), [])
    files.assemble(output, fmt, 3)
    if fmt == "csv":
        units = list(pd.read_csv(output)["unit"])
    elif fmt == "ndjson":
        units = list(pd.read_json(output, lines=True)["unit"])
    else:
        units = list(pq.read_table(output).column("unit").to_pylist())
    assert units == ["c0-u0", "c0-u1", "c0-u2", "c1-u0", "c1-u1", "c1-u2", "c2-a", "c2-b"]
    rejects = [json.loads(line) for line in files.rejects_path(output).read_text().splitlines()]
    assert [r["row"] for r in rejects] == [0, 1]
    assert not files.parts_dir(output).exists()


def test_unknown_extensions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(files.FileProblem):
        files.format_of(tmp_path / "in.xlsx")


def test_a_run_resumed_after_assembling_finds_the_job_assembled(tmp_path: Path) -> None:
    """A worker killed after assembling, before the job was marked done: the resumed run
    assembles again, which must keep the output (its parts are gone) and not fail."""
    output = tmp_path / "out.csv"
    for index in range(2):
        files.write_part(output, "csv", index, frame(2), [{"row": index, "reason": "r"}])
    files.assemble(output, "csv", 2)
    first = output.read_bytes(), files.rejects_path(output).read_bytes()
    files.assemble(output, "csv", 2)  # the resumed run
    assert (output.read_bytes(), files.rejects_path(output).read_bytes()) == first
    # Killed while removing the parts: they were renamed aside first, so the folder is gone
    # whole and what is left aside is cleared by the next run.
    aside = files.parts_dir(output).with_name("out.csv.parts.removing")
    aside.mkdir()
    (aside / "00000000.csv").write_text("unit,x\n")
    files.assemble(output, "csv", 2)
    assert not aside.exists() and output.read_bytes() == first[0]
    # A table job's rejects alike.
    rejects = tmp_path / "job.rejects.ndjson"
    files.write_part(rejects, "csv", 0, None, [{"row": 7, "reason": "r"}])
    files.assemble_rejects(rejects, 1)
    files.assemble_rejects(rejects, 1)
    assert [json.loads(line)["row"] for line in rejects.read_text().splitlines()] == [7]
