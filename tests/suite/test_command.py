"""``scripts/test`` itself: the parts that do not need a whole run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from service.settings import PROJECT_ROOT


def test_offline_without_a_venv_says_what_to_do_first(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(PROJECT_ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test"), "--offline", "-k", "anything"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "scripts/test --offline needs the .venv that a first scripts/test (online) makes" in (
        result.stderr
    )
    assert not (tmp_path / ".venv").exists()  # and it installed nothing
