"""``abx keys``: create, list, revoke and rotate API keys; ``abx webhooks new-secret``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click

from service.access.scopes import SCOPES
from service.cli.support import database_connection, os_actor


def _show_token(name: str, token: str, scopes: list[str]) -> None:
    click.echo(f"created key {name!r} with scopes {', '.join(scopes)}")
    click.echo("the token, shown this once (abx keeps only its hash):")
    click.echo(f"  {token}")
    click.echo("send it as: Authorization: Bearer <token>  (or X-API-Key: <token>)")


@click.group()
def keys() -> None:
    """Scoped API keys (stored hashed in PostgreSQL)."""


@keys.command("create")
@click.option("--name", required=True, help="Who holds it; the audit log records key:NAME.")
@click.option("--scopes", required=True, help=f"Comma-separated, from: {', '.join(SCOPES)}.")
@click.option("--owner", default="", help="A person or team to ask about the key.")
@click.option("--expires", help="Lifetime such as 90d, 12h, 2w (default: never).")
@click.option("--rate", help="This key's limit per scope, e.g. 2000/second (default: per scope).")
def create(name: str, scopes: str, owner: str, expires: str | None, rate: str | None) -> None:
    """Create a key and print its token once."""
    from service.access.keys import create_key, parse_duration

    try:
        expires_in = parse_duration(expires) if expires else None
        with database_connection("keys") as conn:
            new = create_key(conn, name, scopes, os_actor(), owner, expires_in, rate)
    except ValueError as error:
        click.echo(f"refused: {error}", err=True)
        sys.exit(1)
    _show_token(name, new.token, sorted(new.key.scopes))
    if new.key.expires_at:
        click.echo(f"expires {new.key.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC")


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked keys too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def list_(include_revoked: bool, as_json: bool) -> None:
    """Every key with its scopes, state and last use (never a secret)."""
    from service.access.keys import describe, list_keys

    with database_connection("keys") as conn:
        found = [describe(key) for key in list_keys(conn, include_revoked)]
    if as_json:
        click.echo(json.dumps({"keys": found}, indent=2))
        return
    if not found:
        click.echo("no keys (abx keys create --name NAME --scopes SCOPES)")
        return
    click.echo(f"{'id':<12}  {'name':<20} {'state':<8} {'scopes':<40} {'expires (UTC)':<16}"
               " last used (UTC)")  # fmt: skip
    for key in found:
        click.echo(
            f"{key['key_id']:<12}  {key['name']:<20} {key['state']:<8}"
            f" {','.join(key['scopes']):<40} {_short(key['expires_at']):<16}"
            f" {_short(key['last_used_at'])}"
        )


def _short(moment: str | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


@keys.command("revoke")
@click.argument("key", metavar="KEY_ID_OR_TOKEN")
def revoke(key: str) -> None:
    """Revoke a key now: every server refuses it within seconds."""
    from service.access.keys import revoke_key

    with database_connection("keys") as conn:
        revoked = revoke_key(conn, key)
    if revoked is None:
        click.echo(f"there is no key {key!r}", err=True)
        sys.exit(1)
    click.echo(f"revoked {revoked.key_id} ({revoked.name})")


@keys.command("rotate")
@click.argument("name")
@click.option(
    "--grace", default="24h", show_default=True, help="How long the old key keeps working."
)
def rotate(name: str, grace: str) -> None:
    """A new key for NAME with the same scopes; the old one expires after --grace."""
    from service.access.keys import parse_duration, rotate_key

    try:
        grace_period = parse_duration(grace)
        with database_connection("keys") as conn:
            new, old = rotate_key(conn, name, grace_period, os_actor())
    except (ValueError, LookupError) as error:
        click.echo(f"refused: {error}", err=True)
        sys.exit(1)
    _show_token(name, new.token, sorted(new.key.scopes))
    for key in old:
        until = key.expires_at.astimezone(UTC) if key.expires_at else None
        click.echo(f"old key {key.key_id} keeps working until {until:%Y-%m-%d %H:%M} UTC")


@click.group()
def webhooks() -> None:
    """Webhook signing (Standard Webhooks)."""


@webhooks.command("new-secret")
def new_secret() -> None:
    """Print a new random whsec_ secret for ABX_WEBHOOK_SECRET."""
    from service.decisions.webhooks import new_secret as make

    click.echo(make())
