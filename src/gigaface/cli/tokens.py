"""`gigaface token ...`: the API tokens that `gigaface serve` asks for."""
from __future__ import annotations

import json
import os

import typer
from rich.table import Table

from gigaface.cli.console import err, out, when
from gigaface.errors import GigafaceError
from gigaface.library.store import Library

token_app = typer.Typer(no_args_is_help=True, help="API tokens for `gigaface serve` (admin or viewer).")


@token_app.command("create")
def token_create(db: str = typer.Argument(..., help="Library file."),
                 name: str = typer.Option(..., "--name", help="Who or what uses the token."),
                 role: str = typer.Option("viewer", "--role", help="admin (everything) or viewer (look and search)."),
                 create: bool = typer.Option(False, "--create", help="Create the library if it does not exist yet.")) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from gigaface.library.tokens import ROLES, create_token

    if role not in ROLES:  # before a library is made for it
        raise GigafaceError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not os.path.exists(db) and not create:
        raise GigafaceError(f"{db}: no such library (check the name, or add --create to make a new one)")
    token, secret = create_token(Library(db, create=create), name, role)
    err.print(f"token {token.id} ({token.role}, {token.name}); keep it now, it cannot be shown again:")
    print(secret)


@token_app.command("list")
def token_list(db: str = typer.Argument(..., help="Library file."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (never their secrets)."""
    tokens = Library(db).tokens.all()
    if as_json:
        print(json.dumps([t.__dict__ for t in tokens], indent=2))
        return
    table = Table("id", "name", "role", "created", "last used", "revoked")
    for t in tokens:
        table.add_row(str(t.id), t.name, t.role, when(t.created_at), when(t.last_used), "yes" if t.revoked else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(db: str = typer.Argument(..., help="Library file."),
                 token_id: int = typer.Argument(..., help="The token's id (gigaface token list).")) -> None:
    """Revoke a token: requests with it are refused from now on."""
    Library(db).tokens.revoke(token_id)
    out.print(f"token {token_id} revoked")
