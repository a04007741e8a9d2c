"""Reading a Parquet input holds memory for a chunk, not for the file.

pyarrow's ``ParquetFile`` pre-buffers by default: ``iter_batches`` then read ahead every row
group it would visit, and a job's peak memory grew with its input (about 200 MiB of Arrow
memory at 2M rows against 43 MiB without). Each read runs in a fresh process, so the Arrow
pool's peak is that of the read alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.settings import PROJECT_ROOT

READ = (
    "import sys, pyarrow as pa; from pathlib import Path; from service.jobs import files\n"
    "rows = sum(len(c.frame) for c in files.read_chunks(Path(sys.argv[1]), 'parquet', 10_000))\n"
    "print(rows, pa.default_memory_pool().max_memory())"
)


def write(path: Path, rows: int) -> int:
    """A file of 10k-row row groups (a unit and 20 floats); returns its decoded size."""
    schema = pa.schema([("unit", pa.string())] + [(f"x{i}", pa.float64()) for i in range(20)])
    rng = np.random.default_rng(1)
    decoded = 0
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 10_000):
            values = rng.normal(size=(10_000, 20))
            table = pa.table({"unit": [f"user-{i}" for i in range(start, start + 10_000)],
                              **{f"x{i}": values[:, i] for i in range(20)}})  # fmt: skip
            decoded += table.nbytes
            writer.write_table(table)
    return decoded


def peak(path: Path) -> tuple[int, int]:
    result = subprocess.run([sys.executable, "-c", READ, str(path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    rows, peak_bytes = result.stdout.split()
    return int(rows), int(peak_bytes)


def test_reading_a_parquet_input_holds_a_chunk_not_the_file(tmp_path: Path) -> None:
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    write(small, 100_000)
    decoded = write(large, 400_000)
    small_rows, small_peak = peak(small)
    large_rows, large_peak = peak(large)
    assert (small_rows, large_rows) == (100_000, 400_000)
    # Four times the file, the same peak (a few chunks' worth, with room for the allocator).
    assert large_peak < 1.25 * small_peak + 4 * 2**20
    assert large_peak < decoded / 2
