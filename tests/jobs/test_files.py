"""Inputs read in the same exact chunks every time, bad lines reported; outputs appended at
the committed length (a killed worker's extra bytes cut off), Parquet parts joined in order."""

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


def read_units(output: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        return list(pd.read_csv(output)["unit"])
    if fmt == "ndjson":
        return list(pd.read_json(output, lines=True)["unit"])
    return list(pq.read_table(output).column("unit").to_pylist())


def chunk(index: int, rows: int = 3) -> pd.DataFrame:
    return frame(rows).assign(unit=lambda f: [f"c{index}-{u}" for u in f["unit"]])


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_chunks_written_again_after_a_kill_replace_the_uncommitted_ones(
    tmp_path: Path, fmt: str
) -> None:
    """A worker killed between writing a chunk and committing it: the resumed run writes that
    chunk again at the committed lengths, so nothing of the first try is left."""
    output = tmp_path / f"out{files.EXTENSIONS[fmt]}"
    rejects = files.rejects_path(output)
    written = files.Written(0, 0)
    for index in range(2):
        written = files.write_chunk(output, fmt, rejects, index, written, chunk(index),
                                    [{"row": index, "reason": "r"}])  # fmt: skip
    committed = written
    # Chunk 2 written, longer than it will be, then the worker dies before the commit.
    files.write_chunk(output, fmt, rejects, 2, committed, chunk(9, rows=50),
                      [{"row": 99, "reason": "uncommitted"}] * 5)  # fmt: skip
    # The resumed run: chunk 2 again from the committed lengths, then the last one.
    written = files.write_chunk(output, fmt, rejects, 2, committed, chunk(2), [])
    written = files.write_chunk(output, fmt, rejects, 3, written, chunk(3, rows=2),
                                [{"row": 3, "reason": "r"}])  # fmt: skip
    if fmt != "parquet":
        assert written.output_bytes == files.partial_path(output).stat().st_size
    assert written.rejects_bytes == files.partial_path(rejects).stat().st_size
    assert not output.exists()  # published only at the end
    files.publish(output, fmt, rejects, 4)
    assert read_units(output, fmt) == [f"c{i}-u{r}" for i in range(4) for r in range(3 - i // 3)]
    found = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["row"] for r in found] == [0, 1, 3]
    assert not files.partial_path(output).exists() and not files.parts_dir(output).exists()
    # Killed after publishing, before the job was marked done: publishing again keeps it.
    first = output.read_bytes(), rejects.read_bytes()
    files.publish(output, fmt, rejects, 4)
    assert (output.read_bytes(), rejects.read_bytes()) == first


def test_a_csv_header_is_written_once_and_rejects_are_byte_exact(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    rejects = files.rejects_path(output)
    written = files.Written(0, 0)
    rejected = [{"row": 1, "unit": None, "reason": "unit is empty"},
                {"row": 2, "unit": "ü", "reason": "column 'x': not a finite number ('n/a')"}]  # fmt: skip
    for index in range(2):
        written = files.write_chunk(output, "csv", rejects, index, written, chunk(index, 1),
                                    rejected[index:index + 1])  # fmt: skip
    files.publish(output, "csv", rejects, 2)
    assert output.read_text() == '"unit","x"\n"c0-u0",0\n"c1-u0",0\n'
    # As the part files wrote them: json.dumps's defaults, one object a line.
    assert rejects.read_bytes() == (
        b'{"row": 1, "unit": null, "reason": "unit is empty"}\n'
        b'{"row": 2, "unit": "\\u00fc", "reason": "column \'x\': not a finite number (\'n/a\')"}\n'
    )


def test_a_lost_or_cut_short_output_is_a_file_problem(tmp_path: Path) -> None:
    output, rejects = tmp_path / "out.ndjson", tmp_path / "out.rejects.ndjson"
    written = files.write_chunk(output, "ndjson", rejects, 0, files.Written(0, 0), chunk(0), [])
    files.partial_path(output).write_bytes(b"{}")  # shorter than committed
    with pytest.raises(files.FileProblem, match="shorter"):
        files.write_chunk(output, "ndjson", rejects, 1, written, chunk(1), [])
    files.partial_path(output).unlink()
    with pytest.raises(files.FileProblem, match="missing"):
        files.write_chunk(output, "ndjson", rejects, 1, written, chunk(1), [])
    # A job whose chunks were part files (before migration 0030) cannot go on.
    with pytest.raises(files.FileProblem, match="submit the job again"):
        files.write_chunk(output, "ndjson", rejects, 1, files.Written(-1, -1), chunk(1), [])
    assert not files.partial_path(output).exists()


def test_discarding_removes_the_unfinished_files_and_keeps_published_ones(
    tmp_path: Path,
) -> None:
    """What a failed or cancelled job leaves: nothing but the files it had published."""
    parquet, csv_out = tmp_path / "a.parquet", tmp_path / "b.csv"
    for output, fmt in ((parquet, "parquet"), (csv_out, "csv")):
        files.write_chunk(output, fmt, files.rejects_path(output), 0, files.Written(0, 0),
                          chunk(0), [{"row": 0, "reason": "r"}])  # fmt: skip
    aside = files.parts_dir(parquet).with_name("a.parquet.parts.removing")
    aside.mkdir()  # a removal a killed worker left half done
    removed = files.discard(parquet, files.rejects_path(parquet))
    assert sorted(p.name for p in removed) == [
        "a.parquet.parts", "a.parquet.parts.removing", "a.rejects.ndjson.partial"
    ]  # fmt: skip
    files.publish(csv_out, "csv", files.rejects_path(csv_out), 1)
    assert files.discard(csv_out, files.rejects_path(csv_out)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv", "b.rejects.ndjson"]


def test_a_job_without_chunks_publishes_empty_files(tmp_path: Path) -> None:
    output, rejects = tmp_path / "out.csv", tmp_path / "out.rejects.ndjson"
    files.publish(output, "csv", rejects, 0)
    assert output.read_bytes() == b"" and rejects.read_bytes() == b""
    files.publish(tmp_path / "o.parquet", "parquet", tmp_path / "o.rejects.ndjson", 0)
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 0


def test_unknown_extensions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(files.FileProblem):
        files.format_of(tmp_path / "in.xlsx")


def test_a_run_resumed_after_assembling_finds_the_job_assembled(tmp_path: Path) -> None:
    """A Parquet output's worker killed after assembling, before the job was marked done: the
    resumed run assembles again, which must keep the output (its parts are gone)."""
    output = tmp_path / "out.parquet"
    for index in range(2):
        files.write_part(output, index, frame(2))
    files.assemble(output, 2)
    first = output.read_bytes()
    files.assemble(output, 2)  # the resumed run
    assert output.read_bytes() == first
    # Killed while removing the parts: they were renamed aside first, so the folder is gone
    # whole and what is left aside is cleared by the next run.
    aside = files.parts_dir(output).with_name("out.parquet.parts.removing")
    aside.mkdir()
    (aside / "00000000.parquet").write_text("")
    files.assemble(output, 2)
    assert not aside.exists() and output.read_bytes() == first
