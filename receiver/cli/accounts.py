"""`receiver accounts` (product.md section 7): one ListLiveSnapshotJobs call per account, then the table of
/v1/accounts; exits non-zero if any account failed. Never prints a secret."""

from __future__ import annotations

import click

from receiver.cli.context import CliState, pass_state
from receiver.exceptions import ReceiverError
from receiver.web.accounts import accounts_json

COLUMNS = ("alias", "uid", "region", "credential_type", "credential_status", "credential_expires_at", "jobs",
           "ice_calls", "ice_throttled", "last_error")


@click.command()
@pass_state
def accounts(state: CliState) -> None:
    """Each account's credential type and status, after one ListLiveSnapshotJobs call each."""
    failed: dict[str, str] = {}
    with state.services() as svc:
        for account in svc.account_list():
            try:
                svc.for_account(account.alias).ice.list_jobs(page_no=1, page_size=1)
            except ReceiverError as e:
                gw = svc.gateways.get(account.alias)
                failed[account.alias] = gw.credential.redact(str(e)) if gw and gw.credential else str(e)
        rows = accounts_json(svc)
    for row in rows:
        if row["alias"] in failed and not row["last_error"]:
            row["last_error"] = failed[row["alias"]]
    table = [[("-" if row[c] is None else str(row[c])) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if failed:
        raise click.ClickException(f"ListLiveSnapshotJobs failed for {', '.join(sorted(failed))}")
