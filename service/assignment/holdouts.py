"""The largest share each holdout served under its seed, kept in PostgreSQL (``holdout_shares``).

Membership is ``fraction < share``: a larger share only adds units, a smaller one releases
held-out units into launched treatments. Hot reload refuses a smaller share from memory
(``registry.shrunk_holdouts``); across restarts ``abx serve`` asks this table before serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.experiments.holdouts import Holdout


def record_shares(conn: Any, holdouts: Mapping[str, Holdout]) -> list[str]:
    """Record each holdout's share (the largest seen under its seed); return the refusals.

    One transaction, rows locked, so two hosts starting at once agree. A refusal changes
    nothing for that holdout.
    """
    refusals: list[str] = []
    with conn.transaction():
        for key, holdout in sorted(holdouts.items()):
            row = conn.execute(
                "SELECT share FROM holdout_shares WHERE holdout_key = %s AND seed = %s FOR UPDATE",
                (key, holdout.seed),
            ).fetchone()
            if row is not None and holdout.share < row[0]:
                refusals.append(
                    f"holdout {key!r}: share {holdout.share} is below the {row[0]} it served under "
                    f"seed {holdout.seed!r}; that would release held-out units. Restore the share "
                    "or raise its version to start a new holdout."
                )
                continue
            conn.execute(
                "INSERT INTO holdout_shares (holdout_key, seed, share) VALUES (%s, %s, %s)"
                " ON CONFLICT (holdout_key, seed) DO UPDATE"
                " SET share = EXCLUDED.share, recorded_at = now()"
                " WHERE EXCLUDED.share > holdout_shares.share",
                (key, holdout.seed, holdout.share),
            )
    return refusals
