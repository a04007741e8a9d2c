"""A job's input read in chunks, and its output written chunk by chunk as it is committed.

Inputs are CSV (every column read as text, so one odd value never fails the file),
NDJSON (one JSON object a line) or Parquet, chosen by the file's extension. Chunks hold
exactly ``chunk_rows`` rows (the last fewer) and are the same on every read of the same
file, which is what lets a resumed job skip the chunks already committed.

A CSV or NDJSON output, and every job's rejects file, is appended to chunk by chunk under
a ``.partial`` name (``write_chunk``): each chunk is written at the length the file had at
the last committed chunk (``score_jobs.output_bytes``/``rejects_bytes``, committed with the
chunk), cutting off whatever a killed worker wrote past it, and fsynced before the commit.
When every chunk is committed the files are renamed into place (``publish``). A Parquet
output cannot be appended to and resumed: its footer is written only when the writer
closes, so a killed worker leaves a file no reader can open. Its scores go to numbered part
files instead, joined into the output at the end (``assemble``); a part left by a killed
worker past the committed chunk is simply overwritten.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

FORMATS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".parquet": "parquet",
           ".pq": "parquet"}  # fmt: skip
CONTENT_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/vnd.apache.parquet": "parquet",
}
EXTENSIONS = {"csv": ".csv", "ndjson": ".ndjson", "parquet": ".parquet"}


class FileProblem(ValueError):
    """A file abx cannot read or write as a job's input or output (the job is refused)."""


def format_of(path: Path) -> str:
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise FileProblem(f"{path.name}: the extension must be one of {', '.join(FORMATS)}")
    return found


def rejects_path(output: Path) -> Path:
    """Where the rows that could not be scored go, with the reason: beside the output."""
    return output.with_name(output.stem + ".rejects.ndjson")


@dataclass
class Chunk:
    index: int
    first_row: int
    """The 0-based number, among the input's data rows, of this chunk's first row."""
    frame: pd.DataFrame
    """The rows, indexed by their data-row number."""
    rejects: list[dict[str, Any]] = field(default_factory=list)
    """Rows refused while reading (a CSV line with the wrong number of fields, bad JSON)."""


def estimate_rows(path: Path, fmt: str) -> int:
    """Data rows in the file: Parquet's metadata, else its line count (a fast byte scan)."""
    if fmt == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(0, lines - (1 if fmt == "csv" else 0))


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _csv_batches(path: Path, bad_lines: list[dict[str, Any]]) -> Iterator[pa.RecordBatch]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        return
    types = dict.fromkeys(header, pa.string())

    def refuse(row: Any) -> str:
        bad_lines.append({"line": row.number, "reason": f"{row.actual_columns} fields where the "
                          f"header has {row.expected_columns}"})  # fmt: skip
        return "skip"

    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(use_threads=False, block_size=1 << 22),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=refuse),
        convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )
    yield from reader


def _ndjson_chunks(path: Path, rows: int) -> Iterator[tuple[list[dict[str, Any]], list[int],
                                                          list[dict[str, Any]]]]:  # fmt: skip
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[dict[str, Any]] = []
    row = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                record, reason = None, f"not valid JSON: {error}"
            else:
                reason = "" if isinstance(record, dict) else "not a JSON object"
            if reason:
                bad.append({"row": row, "line": line_number, "reason": reason})
            else:
                records.append(record)
                numbers.append(row)
            row += 1
            if row % rows == 0:
                yield records, numbers, bad
                records, numbers, bad = [], [], []
    if records or bad:
        yield records, numbers, bad


def read_chunks(path: Path, fmt: str, rows: int) -> Iterator[Chunk]:
    """The input, ``rows`` at a time (a chunk of an NDJSON file counts its bad lines too)."""
    if fmt == "ndjson":
        first = 0
        for index, (records, numbers, bad) in enumerate(_ndjson_chunks(path, rows)):
            frame = pd.DataFrame.from_records(records, index=numbers) if records else pd.DataFrame()
            yield Chunk(index, first, frame, bad)
            first += len(records) + len(bad)
        return
    bad_lines: list[dict[str, Any]] = []
    if fmt == "csv":
        batches: Iterator[pa.RecordBatch] = _csv_batches(path, bad_lines)
    else:
        # pre_buffer=False: the default pre-buffers every row group the iterator will read,
        # so memory grew with the file (200 MiB at 2M rows), not with the chunk (43 MiB).
        batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=rows)
    first = 0
    for index, table in enumerate(_rebatch(batches, rows)):
        frame = table.to_pandas()
        frame.index = pd.RangeIndex(first, first + len(frame))
        taken, bad_lines[:] = list(bad_lines), []
        yield Chunk(index, first, frame, taken)
        first += len(frame)


def partial_path(path: Path) -> Path:
    """Where a file is appended to until its job is done."""
    return path.with_name(path.name + ".partial")


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


@dataclass(frozen=True)
class Written:
    """The committed length of a job's appended files: where the next chunk is written."""

    output_bytes: int
    """Of a CSV or NDJSON output (0 for Parquet and table outputs, which are not appended)."""
    rejects_bytes: int


def _write_at(path: Path, offset: int, data: bytes) -> int:
    """``data`` at ``offset``, the rest of the file cut off, on disk before it returns."""
    partial = partial_path(path)
    if offset < 0:  # see migrations/0030_job_outputs_and_lineage.sql
        raise FileProblem(f"{path.name}: its chunks so far are part files written by an abx "
                          "before migration 0030; submit the job again")  # fmt: skip
    if offset and not partial.exists():
        raise FileProblem(f"{partial.name}: the output written so far is missing")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("r+b" if partial.exists() else "wb") as handle:
        if offset > handle.seek(0, os.SEEK_END):
            raise FileProblem(f"{partial.name}: shorter than its committed {offset} bytes")
        handle.seek(offset)
        handle.truncate()
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        return offset + len(data)


def _encoded(scored: pd.DataFrame, fmt: str, header: bool) -> bytes:
    if fmt == "ndjson":
        # An empty frame would write one empty line, which no NDJSON reader accepts.
        return scored.to_json(orient="records", lines=True).encode() if len(scored) else b""
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(scored, preserve_index=False)
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=header))
    return bytes(sink.getvalue())


def encoded_rejects(rejects: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(reject, default=str) + "\n" for reject in rejects).encode()


def write_chunk(
    output: Path | None,
    fmt: str,
    rejects: Path,
    index: int,
    written: Written,
    scored: pd.DataFrame | None,
    rejected: list[dict[str, Any]],
) -> Written:
    """Chunk ``index``'s scores and rejects, at the committed lengths ``written``; the new
    lengths, to commit with the chunk.

    ``output`` is None (and ``scored`` too) for a job whose scores go to a table; a Parquet
    chunk goes to its part file (``write_part``)."""
    output_bytes = written.output_bytes
    if output is not None and scored is not None:
        if fmt == "parquet":
            write_part(output, index, scored)
        else:
            data = _encoded(scored, fmt, header=index == 0)
            output_bytes = _write_at(output, written.output_bytes, data)
    rejects_bytes = _write_at(rejects, written.rejects_bytes, encoded_rejects(rejected))
    return Written(output_bytes, rejects_bytes)


def _replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(final)


def write_part(output: Path, index: int, scored: pd.DataFrame) -> None:
    """A Parquet output's chunk ``index``, renamed into place once complete."""
    folder = parts_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{index:08d}.parquet"
    tmp = target.with_name(target.name + ".tmp")
    pq.write_table(pa.Table.from_pandas(scored, preserve_index=False), tmp)
    _replace(tmp, target)


def _publish_one(path: Path) -> None:
    """Rename the appended file into place. A run resumed after it did (every chunk was
    committed, the worker killed before the job was marked done) finds it in place already;
    a job with no chunk at all has an empty file."""
    partial = partial_path(path)
    if partial.exists():
        _replace(partial, path)
    elif not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def publish(output: Path | None, fmt: str, rejects: Path, chunks: int) -> None:
    """The job's end: its output and rejects file in place (a Parquet output assembled)."""
    if output is not None:
        if fmt == "parquet":
            assemble(output, chunks)
        else:
            _publish_one(output)
    _publish_one(rejects)


def _assembled(folder: Path, chunks: int) -> bool:
    """True when an earlier run already assembled: the parts are removed only after the output
    is in place, so committed chunks without their folder mean it is done (a worker killed
    after assembling, before the job was marked done, resumes here)."""
    if chunks == 0 or folder.exists():
        return False
    shutil.rmtree(_removing(folder), ignore_errors=True)
    return True


def _removing(folder: Path) -> Path:
    return folder.with_name(folder.name + ".removing")


def _remove_parts(folder: Path) -> None:
    """Renamed first, then deleted: the parts folder is there whole or not at all."""
    gone = _removing(folder)
    shutil.rmtree(gone, ignore_errors=True)
    if folder.exists():
        folder.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)


def assemble(output: Path, chunks: int) -> None:
    """Join a Parquet output's parts 0..chunks-1 into the output; remove the parts."""
    folder = parts_dir(output)
    if _assembled(folder, chunks):
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    writer: pq.ParquetWriter | None = None
    for index in range(chunks):
        table = pq.read_table(folder / f"{index:08d}.parquet")
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table.cast(writer.schema))
    if writer is not None:
        writer.close()
    else:
        pq.write_table(pa.table({}), tmp)
    _replace(tmp, output)
    _remove_parts(folder)


def unfinished(output: Path | None, rejects: Path) -> list[Path]:
    """A job's files that exist only until it is published: the appended ``.partial`` files
    and a Parquet output's parts (with a removal a killed worker left half done)."""
    found = []
    if output is not None:
        found += [parts_dir(output), _removing(parts_dir(output)), partial_path(output)]
    found.append(partial_path(rejects))
    return [path for path in found if path.exists()]


def discard(output: Path | None, rejects: Path) -> list[Path]:
    """A cancelled or failed job's unfinished files, removed (its published ones are left
    alone: the output of a job cancelled after its last chunk stays whole); those removed."""
    removed = unfinished(output, rejects)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
