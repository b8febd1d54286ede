"""The `receiver` command line (product.md section 4): one click group; commands get their state from
``ctx.obj`` (a CliState), so tests drive them with a Settings object instead of environment variables."""

from __future__ import annotations

import click

from receiver.cli import accounts, db, ops, server
from receiver.cli.context import CliState
from receiver.cli.demo import demo

__all__ = ["CliState", "main"]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Receiver for Alibaba Cloud ICE live snapshot callbacks."""
    ctx.ensure_object(CliState)


for command in (*server.COMMANDS, demo, db.db, *ops.COMMANDS, accounts.accounts):
    main.add_command(command)
