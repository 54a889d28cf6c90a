"""Signed interactions: `sign` (institution side), `simulate`, and `relay` (platform side)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from medmeter.cli.context import progress_bar, resolve_institution, session_of
from medmeter.cli.options import EXIT_REJECTED, batch_size_option
from medmeter.errors import MedmeterError


@click.command()
@click.argument("payload", type=click.Path(path_type=Path), required=False)
@click.option("--wallet", required=True, help="The signing institution's keystore name.")
@click.option(
    "--audit-events",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Sign this institution's share of a FHIR AuditEvent log (Bundle or NDJSON) instead of PAYLOAD.",
)
@click.option(
    "--bulk-manifest",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Sign one interaction per output file of a FHIR Bulk Data $export manifest (with --kind).",
)
@click.option(
    "--rules",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="With --audit-events: an operator's mapping table merged over the shipped one (docs/audit-events.md).",
)
@click.option(
    "--kind",
    type=click.Choice(["sync", "fetch", "exchange"]),
    help="sync: this institution delivers PAYLOAD to the platform (credited); fetch: it obtains PAYLOAD from the "
    "platform (debited); exchange: it uses PAYLOAD delivered by --counterparty (debited, the provider credited).",
)
@click.option(
    "--counterparty",
    help="Exchange only: the providing institution (its institution code, keystore name or address).",
)
@click.option("--category", help="Category name or id (inferred from a FHIR bundle if omitted).")
@click.option("--any-file", is_flag=True, help="PAYLOAD is not a FHIR bundle: give --category and --records.")
@click.option("--records", type=int, help="Record count, with --any-file.")
@click.option("--nonce", type=click.IntRange(0, 2**256 - 1), help="Default: the next one from the nonce book.")
@click.option(
    "--valid-for",
    type=click.IntRange(60),
    default=7 * 24 * 3600,
    show_default=True,
    help="Seconds until the signature expires.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON-lines file to append to.",
)
@click.pass_context
def sign(
    ctx: click.Context,
    payload: Path | None,
    wallet: str,
    audit_events: Path | None,
    bulk_manifest: Path | None,
    rules: Path | None,
    kind: str | None,
    counterparty: str | None,
    category: str | None,
    any_file: bool,
    records: int | None,
    nonce: int | None,
    valid_for: int,
    output: Path,
) -> None:
    """Sign one interaction about PAYLOAD (institution side). Only its hash, category and record
    count are signed; the payload never leaves this machine.

    The nonce comes from the nonce book (.medmeter/nonces.json), under a file lock so that
    concurrent `sign` processes never share one; a failed `sign` leaves the book and OUTPUT as
    they were.

    \b
    Examples:
      medmeter sign samples/bundle.json --wallet clinic-a --kind sync -o outbox.jsonl
      medmeter sign samples/bundle.json --wallet clinic-b --kind exchange --counterparty PCI-0101 -o outbox.jsonl
      medmeter sign samples/scan.dcm --any-file --category imaging --records 1 --wallet clinic-a \\
          --kind sync -o outbox.jsonl
      medmeter sign --audit-events samples/audit-events.json --wallet clinic-a -o outbox.jsonl
      medmeter sign --bulk-manifest samples/bulk-manifest.json --kind sync --wallet clinic-a -o outbox.jsonl
    """
    if audit_events is not None or bulk_manifest is not None:
        _sign_log(ctx, wallet, audit_events, bulk_manifest, rules, kind, counterparty, valid_for, output)
        return
    if payload is None or kind is None:
        raise click.UsageError("give PAYLOAD and --kind (or --audit-events FILE, or --bulk-manifest FILE --kind).")
    from medmeter.errors import InputError
    from medmeter.fileio import append_line
    from medmeter.intake.payload import summarize_path
    from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, Kind, iter_json_lines, sign_interaction

    session = session_of(ctx)
    summary = summarize_path(payload, category, records, any_file)
    kind_value = Kind.parse(kind)
    if (kind_value is Kind.EXCHANGE) != (counterparty is not None):
        raise InputError("--counterparty is required for an exchange and not allowed otherwise.")
    account = session.keystores.unlock(wallet)
    ledger = session.ledger(as_operator=False)
    institution_address = ledger.institution_signed_by(account.address, wallet)
    counterparty_address = _counterparty(session, ledger, counterparty) if counterparty else ZERO_ADDRESS
    # The nonce is reserved and the line appended under the nonce book's lock; the book is written
    # only after the line is, so a failure anywhere leaves both as they were.
    with session.nonce_book.transaction() as book:
        interaction = Interaction(
            kind=kind_value,
            institution=institution_address,
            counterparty=counterparty_address,
            category=summary.category,
            records=summary.records,
            units=ledger.price(kind_value, summary.category, summary.records),
            data_hash=summary.data_hash,
            nonce=nonce if nonce is not None else book.reserve(institution_address),
            deadline=int(time.time()) + valid_for,
        )
        signed = sign_interaction(interaction, ledger.domain, account)
        append_line(output, "".join(iter_json_lines([signed])))
    click.echo(
        f"signed {kind} of {summary.records} record(s), category {summary.category}, {interaction.units} units, "
        f"nonce {interaction.nonce} -> {output}"
    )


def _sign_log(
    ctx: click.Context,
    wallet: str,
    audit_events: Path | None,
    bulk_manifest: Path | None,
    rules: Path | None,
    kind: str | None,
    counterparty: str | None,
    valid_for: int,
    output: Path,
) -> None:
    """`sign --audit-events` / `--bulk-manifest`: this institution's candidates, signed and appended."""
    from medmeter.fileio import append_line
    from medmeter.intake.audit_events import load_rules, read_audit_events, summarise
    from medmeter.intake.bulk_manifest import read_bulk_manifest
    from medmeter.signing.from_logs import registered_codes, sign_candidates
    from medmeter.signing.interaction import iter_json_lines

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    account = session.keystores.unlock(wallet)
    institution = ledger.institution_signed_by(account.address, wallet)
    codes = registered_codes(ledger)
    own_code = next(code for code, address in codes.items() if address == institution)
    if audit_events is not None:
        intake = read_audit_events(audit_events, institutions=codes, rules=load_rules(rules))
        summarise(intake, echo=lambda line: click.echo(line, err=True))
        candidates = intake.candidates
    else:
        if kind is None:
            raise click.UsageError("--bulk-manifest needs --kind: which way the files went (sync, fetch, exchange).")
        candidates = read_bulk_manifest(
            bulk_manifest, kind=kind, institution=own_code, institutions=codes, counterparty=counterparty
        )
    result = sign_candidates(ledger, account, institution, candidates, valid_for)
    if result.signed:
        append_line(output, "".join(iter_json_lines(result.signed)))
    click.echo(
        f"signed {len(result.signed)} interaction(s) for {own_code} -> {output}; {result.already_used} already on "
        f"the ledger (a log read twice meters nothing twice), {result.others} for other institutions to sign"
    )


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@batch_size_option
@click.option(
    "--rejected",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every refused item here, whole (JSON lines), to fix or re-sign and relay again.",
)
@click.pass_context
def relay(ctx: click.Context, files: tuple[Path, ...], batch_size: int, rejected: Path | None) -> None:
    """Record signed interactions from FILES in batches (platform side).

    Items already on chain are skipped (a rerun after a crash records nothing twice); an item
    the ledger refuses is reported with its reason and the rest are recorded. Up to 10 refusals
    are listed one per line; more are summarised by reason (a count per error name), the whole
    list going to --rejected. Exits 3 if any item was refused.

    \b
    Examples:
      medmeter relay outbox.jsonl --batch-size 100 --rejected refused.jsonl
      medmeter relay traffic.jsonl day2.jsonl
    """
    from medmeter.fileio import write_atomic
    from medmeter.relay.engine import relay as relay_items
    from medmeter.signing.interaction import iter_json_lines, read_signed

    items = [item for path in files for item in read_signed(path)]
    ledger = session_of(ctx).ledger()
    started = time.perf_counter()
    with progress_bar(len(items), "relay") as progress:
        report = relay_items(ledger, items, batch_size=batch_size, progress=progress)
    elapsed = time.perf_counter() - started
    _report_refusals(report.rejected, rejected)
    if rejected and report.rejected:
        write_atomic(rejected, "".join(iter_json_lines(r.item for r in report.rejected)))
    click.echo(
        f"recorded {len(report.recorded)}, already recorded {len(report.already_recorded)}, refused "
        f"{len(report.rejected)} in {len(report.transactions)} transaction(s), {elapsed:.1f} s; "
        f"{report.gas_per_interaction:,.0f} gas per interaction"
    )
    if report.rejected:
        saved = f" (saved to {rejected})" if rejected else ""
        others = len(items) - len(report.rejected)
        on_ledger = f"; the other {others} are on the ledger" if others else ""
        click.echo(
            f"error: {len(report.rejected)} of {len(items)} interaction(s) refused{saved}, for the reasons above"
            f"{on_ledger}. Fix or re-sign the refused ones and relay them again.",
            err=True,
        )
        ctx.exit(EXIT_REJECTED)


@click.command()
@click.option(
    "--count", type=click.IntRange(1), default=1000, show_default=True, help="Number of interactions to sign."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same traffic.")
@click.option("--wallet", "wallets", multiple=True, help="Institution keystores taking part (default: all registered).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON-lines file to write (replaced whole, never half-written); relay it with `medmeter relay`.",
)
@click.pass_context
def simulate(ctx: click.Context, count: int, seed: int, wallets: tuple[str, ...], output: Path) -> None:
    """Write COUNT signed synthetic interactions, each from a generated FHIR bundle, to OUTPUT.

    Each institution signs with its own keystore; nonces come from the nonce book, which is
    written only once OUTPUT is, so a failed run leaves both as they were.

    \b
    Example:
      medmeter simulate --count 1000 --seed 7 -o traffic.jsonl && medmeter relay traffic.jsonl
    """
    from medmeter.app.operations import simulate_traffic
    from medmeter.fileio import write_atomic
    from medmeter.signing.interaction import iter_json_lines

    session = session_of(ctx)
    names = list(wallets) or _registered_wallets(session)
    # One transaction over signing and writing: the reserved nonces reach the book only with the file.
    with session.nonce_book.transaction(), progress_bar(count, "sign") as progress:
        items = simulate_traffic(session, names, count, seed, progress)
        write_atomic(output, "".join(iter_json_lines(items)))
    click.echo(f"wrote {len(items)} signed interactions from {len(names)} institutions to {output}")


# Beyond this many refusals the terminal gets a count per reason; the items go to --rejected.
LISTED_REFUSALS = 10


def _report_refusals(refusals: list[Any], rejected: Path | None) -> None:
    """One line per refusal for a few; for many, the first few and a count per error name."""
    from collections import Counter

    for rejection in refusals[:LISTED_REFUSALS]:
        click.echo(
            f"item {rejection.index} (nonce {rejection.item.interaction.nonce}) refused: {rejection.reason}", err=True
        )
    if len(refusals) <= LISTED_REFUSALS:
        return
    by_reason = Counter(r.error_name for r in refusals)
    click.echo(
        f"... and {len(refusals) - LISTED_REFUSALS} more; refused by reason: "
        + ", ".join(f"{name} {count}" for name, count in by_reason.most_common())
        + (f" (every item in {rejected})" if rejected else " (pass --rejected FILE to keep every item)"),
        err=True,
    )


def _counterparty(session: Any, ledger: Any, value: str) -> str:
    return resolve_institution(session, ledger, value)


def _registered_wallets(session: Any) -> list[str]:
    registered = {i.address for i in session.ledger(as_operator=False).institutions() if i.status == "active"}
    names = [n for n in session.keystores.names() if session.keystores.address(n) in registered]
    if len(names) < 2:
        raise MedmeterError("simulation needs at least two registered institutions with keystores here.")
    return names
