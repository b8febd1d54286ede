"""Operator commands: reconcile, track, untrack, replay, prune, backfill-signals (product.md section 4)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from receiver.accounts import DEFAULT
from receiver.cli.context import CliState, pass_state
from receiver.db.models import EventStatus, Job
from receiver.exceptions import JobNotFound, ReceiverError, Rejected
from receiver.ops.backfill import backfill
from receiver.ops.reconcile import Reconciler
from receiver.ops.replay import replay as do_replay
from receiver.ops.replay import run_events
from receiver.ops.retention import PruneIncomplete, apply_retention, parse_duration
from receiver.ops.retention import prune as do_prune
from receiver.ops.tracking import discover
from receiver.ops.tracking import track as do_track
from receiver.ops.tracking import untrack as do_untrack
from receiver.tiers import parse_retention
from receiver.timeutil import ms_to_iso, parse_time_ms


def _time(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    ms = parse_time_ms(value)
    if ms is None:
        raise click.BadParameter(f"expected ISO-8601 or Unix milliseconds, got {value!r}", param_hint=name)
    return ms


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None] | None]:
    if not sys.stdout.isatty() or total <= 0:
        yield None
        return
    with click.progressbar(length=total, label="reconciling", show_eta=True, show_percent=True) as bar:
        yield bar.update


@click.command()
@click.option("--job", "job_ids", multiple=True, help="Only this job (tracked or not); repeatable.")
@click.option("--since", help="From this time (ISO-8601 or Unix ms); default: the job's cursor.")
@click.option("--until", help="Up to this time (ISO-8601 or Unix ms); default: now.")
@pass_state
def reconcile(state: CliState, job_ids: tuple[str, ...], since: str | None, until: str | None) -> None:
    """Page ListLiveSnapshotFiles and index what is missing before exiting."""
    since_ms, until_ms = _time(since, "--since"), _time(until, "--until")
    if since_ms is not None and until_ms is not None and until_ms < since_ms:
        raise click.BadParameter("--until is before --since")
    with state.services() as svc:
        if not job_ids and svc.settings.discover_jobs:
            discover(svc)
        probe = Reconciler(svc)
        ids = list(job_ids) or probe.tracked_jobs()
        if not ids:
            click.echo("no tracked jobs (receiver track <job_id>, or a verified callback, adds one)")
            return
        with svc.sessions() as s:
            spans = [probe.span(s.get(Job, j), since_ms, until_ms) for j in ids]
        total = sum(max(0, end - start) for start, end in spans)
        with _progress(total) as progress:
            rec = Reconciler(svc, execute=lambda ev: run_events(svc, ev), progress=progress)
            if len(ids) == 1 and job_ids:
                try:
                    tally = rec.reconcile_job(ids[0], since_ms, until_ms)
                except JobNotFound:
                    raise click.ClickException(f"ICE does not know job {ids[0]!r}") from None
            else:
                tally = rec.run(ids, since_ms, until_ms)
        for err in tally.errors:
            click.echo(f"error: {err}", err=True)
        click.echo(f"{len(ids)} job(s): {tally.summary()}")
        if tally.errors:
            sys.exit(1)


@click.command()
@click.argument("job_id")
@click.option("--account", default=DEFAULT, show_default=True,
              help="Alias of the account the job belongs to (RECEIVER_ACCOUNTS_FILE).")
@pass_state
def track(state: CliState, job_id: str, account: str) -> None:
    """Add a job to reconciliation (verified with ICE first, with the account's credentials)."""
    with state.services() as svc:
        try:
            info = do_track(svc, job_id, account)
        except JobNotFound:
            raise click.ClickException(f"ICE does not know job {job_id!r} in account {account!r}") from None
        except Rejected as e:
            raise click.ClickException(str(e)) from None
        except ReceiverError as e:
            raise click.ClickException(f"could not verify job {job_id!r} with ICE: {e}") from None
        click.echo(f"tracking {info.job_id} ({info.name or 'unnamed'}, {info.status or 'unknown status'})")


@click.command()
@click.argument("job_id")
@pass_state
def untrack(state: CliState, job_id: str) -> None:
    """Remove a job from reconciliation, until `receiver track` (callbacks no longer re-track it)."""
    with state.services() as svc:
        if not do_untrack(svc, job_id):
            raise click.ClickException(f"unknown job {job_id!r}")
        click.echo(f"not tracking {job_id}")


@click.command()
@click.option("--status", "statuses", type=click.Choice([EventStatus.FAILED.value, EventStatus.REJECTED.value]),
              multiple=True, help="Which events (default failed); repeatable.")
@click.option("--job", "job_id", help="Only this job's events.")
@click.option("--process", is_flag=True, help="Also process them here before exiting (else serve/worker does).")
@pass_state
def replay(state: CliState, statuses: tuple[str, ...], job_id: str | None, process: bool) -> None:
    """Re-queue events: status pending, attempts reset, due now."""
    with state.services() as svc:
        ids = do_replay(svc, statuses or (EventStatus.FAILED,), job_id)
        click.echo(f"re-queued {len(ids)} event(s)")
        if process and ids:
            results = run_events(svc, ids)
            counts = {st: results.count(st) for st in sorted(set(results))}
            click.echo("processed: " + ", ".join(f"{st} {n}" for st, n in counts.items()))


@click.command()
@click.option("--older-than", "older_than", default=None,
              help="Age like 12h, 30d, 2w. Without it: apply RECEIVER_RETENTION.")
@click.option("--dry-run", is_flag=True, help="Print what would go; delete nothing.")
@pass_state
def prune(state: CliState, older_than: str | None, dry_run: bool) -> None:
    """Delete snapshots (rows and thumbnails) and done/rejected events older than --older-than, or apply the
    tiers of RECEIVER_RETENTION (thin, then drop what is past the last tier)."""
    seconds: float | None = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--older-than") from None
    with state.services() as svc:
        tiers = parse_retention(svc.settings.retention)
        if seconds is None and not tiers:
            raise click.UsageError("nothing to prune by: give --older-than (like 30d) or set RECEIVER_RETENTION "
                                   "(like 7d:all,90d:1m,1y:1h)")
        try:
            result = (do_prune(svc, seconds, dry_run=dry_run) if seconds is not None
                      else apply_retention(svc, tiers, dry_run=dry_run))
        except PruneIncomplete as e:
            result = e.result  # what was done before it stopped is still said, then the error
        # What was done first, even when it stopped short: a re-run starts from what is left.
        for job, n in sorted(result.per_job.items()):
            click.echo(f"  {job}: {n} snapshots")
        for tier, n in result.thinned.items():
            click.echo(f"  tier {tier}: {n} snapshots thinned")
        for day, n in result.days.items():
            click.echo(f"  day {day}: {n} snapshots (partitions dropped)")
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {result.summary()}")
        if dry_run:
            click.echo(f"(cutoff {ms_to_iso(result.cutoff_ms)}; nothing deleted)")
        for err in result.errors:
            click.echo(f"error: {err}", err=True)
        if result.errors:
            sys.exit(1)


@click.command("backfill-signals")
@click.option("--job", "job_id", default=None, help="Only this job's snapshots.")
@click.option("--batch", default=200, show_default=True, help="Snapshots per transaction.")
@pass_state
def backfill_signals(state: CliState, job_id: str | None, batch: int) -> None:
    """Compute luma, dHash and placeholder for snapshots that lack them (after upgrading)."""
    with state.services() as svc:
        r = backfill(svc, batch=batch, job_id=job_id)
    click.echo(f"signals computed for {r.updated} snapshots; {r.missing} without a readable thumbnail")


COMMANDS = (reconcile, track, untrack, replay, prune, backfill_signals)
