"""Commands an institution runs on its own machine, with its own key: consent to registration, rotate
its key, cancel unrelayed signatures, dispute what was recorded, sign the reversal of a recorded
interaction, and audit the chain against its receipts.

Each writes a signed file the platform submits (it can relay it, not change it), or acts directly from
the institution's signer address when that key holds ether.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from medmeter.cli.context import resolve_institution, session_of

# How long a signed registry message stays valid by default: long enough to reach the platform.
DEFAULT_VALID_FOR = 7 * 24 * 3600
VALID_FOR = click.option(
    "--valid-for",
    type=click.IntRange(60),
    default=DEFAULT_VALID_FOR,
    show_default=True,
    help="Seconds until the signed message expires.",
)
OUTPUT = click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The signed file to write."
)


@click.command()
@click.option("--wallet", required=True, help="The institution's own keystore (the key being registered).")
@click.option("--code", required=True, help="The institution's official code (at most 32 bytes).")
@click.option("--name", "display_name", required=True, help="Display name (an organisation, never a person).")
@VALID_FOR
@OUTPUT
@click.pass_context
def consent(ctx: click.Context, wallet: str, code: str, display_name: str, valid_for: int, output: Path) -> None:
    """Sign this institution's consent to be registered under CODE and NAME (institution side).

    The platform registers the institution with `medmeter institution register FILE`; without
    this file signed by the key itself, the ledger refuses the registration."""
    from medmeter.signing.consent import registration, write_message_file

    session = session_of(ctx)
    account = session.keystores.unlock(wallet)
    domain = session.ledger(as_operator=False).domain
    deadline = int(time.time()) + valid_for
    from medmeter.chain.ledger import code_to_bytes32

    signature = registration(account.address, code, display_name, deadline, domain, account)
    message = {
        "institution": account.address,
        "code": code_to_bytes32(code),
        "name": display_name,
        "deadline": deadline,
    }
    write_message_file(output, "Registration", message, domain, {"institution": signature})
    click.echo(f"{account.address} consents to be registered as {code} ({display_name}) -> {output}")


@click.command("rotate-key")
@click.option("--wallet", required=True, help="The institution's current signer keystore.")
@click.option("--new-wallet", required=True, help="The keystore of the new key (made with `medmeter wallet new`).")
@VALID_FOR
@OUTPUT
@click.pass_context
def rotate_key(ctx: click.Context, wallet: str, new_wallet: str, valid_for: int, output: Path) -> None:
    """Sign a rotation of this institution's key to NEW_WALLET: the current key signs the rotation and
    the new key its acceptance (institution side). The platform submits it with
    `medmeter institution rotate FILE`; it takes effect at once."""
    from medmeter.signing.consent import signer_acceptance, signer_rotation, write_message_file

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    current = session.keystores.unlock(wallet)
    new_key = session.keystores.unlock(new_wallet)
    institution = ledger.institution_signed_by(current.address, wallet)
    nonce = int(ledger.call(ledger.contract.functions.registryNonce(institution)))
    deadline = int(time.time()) + valid_for
    domain = ledger.domain
    message = {"institution": institution, "newSigner": new_key.address, "nonce": nonce, "deadline": deadline}
    signatures = {
        "signer": signer_rotation(institution, new_key.address, nonce, deadline, domain, current),
        "new_signer": signer_acceptance(institution, new_key.address, nonce, deadline, domain, new_key),
    }
    write_message_file(output, "SignerRotation", message, domain, signatures)
    click.echo(f"{institution} rotates from {current.address} to {new_key.address} -> {output}")


@click.command()
@click.option("--wallet", required=True, help="The institution's signer keystore.")
@click.option("--nonce", "nonces", type=click.IntRange(0, 2**256 - 1), multiple=True, help="A nonce to cancel.")
@click.option("--range", "ranges", type=(click.IntRange(0), click.IntRange(0)), multiple=True, help="FIRST LAST.")
@VALID_FOR
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write signed files here.")
@click.pass_context
def cancel(
    ctx: click.Context,
    wallet: str,
    nonces: tuple[int, ...],
    ranges: tuple[tuple[int, int], ...],
    valid_for: int,
    output: Path | None,
) -> None:
    """Cancel this institution's unrelayed signatures by nonce (institution side).

    With -o, writes a signed cancellation per nonce word for the platform to submit with
    `medmeter institution submit-cancellation FILE`; without it, sends the cancellation from the
    signer's own address (which then needs ether for gas)."""
    from medmeter.chain.rpc import Transactor
    from medmeter.errors import InputError
    from medmeter.signing.consent import nonce_cancellation, nonce_masks, write_message_file

    chosen = sorted({*nonces, *(n for first, last in ranges for n in range(first, last + 1))})
    if not chosen:
        raise InputError("name the nonces to cancel with --nonce N or --range FIRST LAST.")
    if any(last < first or last - first > 4096 for first, last in ranges):
        raise InputError("each --range is FIRST LAST with FIRST <= LAST and at most 4,096 nonces.")
    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    signer = session.keystores.unlock(wallet)
    institution = ledger.institution_signed_by(signer.address, wallet)
    deadline = int(time.time()) + valid_for
    masks = nonce_masks(chosen)
    for index, (word, mask) in enumerate(sorted(masks.items())):
        if output is not None:
            path = output if len(masks) == 1 else output.with_name(f"{output.stem}-{index}{output.suffix}")
            signature = nonce_cancellation(institution, word, mask, deadline, ledger.domain, signer)
            message = {"institution": institution, "wordIndex": word, "mask": mask, "deadline": deadline}
            write_message_file(path, "NonceCancellation", message, ledger.domain, {"institution": signature})
            click.echo(f"signed the cancellation of {bin(mask).count('1')} nonce(s) of word {word} -> {path}")
        else:
            session.ensure_funded(signer.address)
            Transactor(session.w3, signer).transact(ledger.contract.functions.cancelNonces(institution, word, mask))
            click.echo(f"cancelled {bin(mask).count('1')} nonce(s) of word {word} on chain")


@click.command()
@click.option("--institution", "who", required=True, help="Address, keystore name or code of the institution.")
@click.option(
    "--receipts",
    "receipts",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    multiple=True,
    required=True,
    help="A JSON-lines file of interactions the institution signed (repeat for several).",
)
@click.pass_context
def audit(ctx: click.Context, who: str, receipts: tuple[Path, ...]) -> None:
    """Check the chain against what this institution signed: every interaction recorded for it that
    it did not sign, every signed one not recorded, every field that differs, and every change to
    its registration. Exits 1 on any discrepancy."""
    from medmeter.app.pipeline import export_dir_for, update_export
    from medmeter.errors import MedmeterError
    from medmeter.export.reading import read_export
    from medmeter.signing.interaction import read_signed
    from medmeter.statement.audit import AUDIT_COLUMNS
    from medmeter.statement.audit import audit as audit_institution

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    address = resolve_institution(session, ledger, who)
    items = [item for path in receipts for item in read_signed(path)]
    export = update_export(ledger, export_dir_for(session, ledger))
    rows = read_export(export.out_dir, columns=AUDIT_COLUMNS).to_pandas()
    head = session.w3.eth.get_block(export.last_block)
    report = audit_institution(ledger, address, items, rows, export.last_block, int(head["timestamp"]))
    for line in report.lines():
        click.echo(line)
    if report.discrepancies:
        raise MedmeterError(
            f"{len(report.discrepancies)} discrepancy(ies) between your receipts and the chain: see the lines above."
        )


@click.command()
@click.option("--wallet", required=True, help="The institution's signer keystore.")
@click.option("--period", type=click.IntRange(1), required=True, help="The period disputed.")
@click.option(
    "--interaction",
    "digest",
    help="The EIP-712 digest (0x...) of a recorded interaction; omit (and --tx) to dispute the statement.",
)
@click.option("--tx", "tx_hash", help="With --log-index: the transaction that recorded the disputed interaction.")
@click.option("--log-index", type=click.IntRange(0), help="With --tx: the interaction's log index (as exported).")
@click.option("--reason", required=True, help="The explanation; only its keccak256 goes on chain.")
@click.pass_context
def dispute(
    ctx: click.Context,
    wallet: str,
    period: int,
    digest: str | None,
    tx_hash: str | None,
    log_index: int | None,
    reason: str,
) -> None:
    """File a dispute of a recorded interaction (by digest, or by --tx and --log-index) or of this
    institution's statement for a period, from its signer's own address (institution side).
    `medmeter report` lists disputes."""
    from eth_utils import keccak

    from medmeter.chain.rpc import Transactor
    from medmeter.errors import InputError
    from medmeter.settlement.corrections import interaction_at, parse_digest

    if (tx_hash is None) != (log_index is None) or (digest is not None and tx_hash is not None):
        raise InputError("name the disputed interaction one way: --interaction DIGEST, or --tx HASH --log-index N.")
    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    signer = session.keystores.unlock(wallet)
    institution = ledger.institution_signed_by(signer.address, wallet)
    raw = b"\0" * 32
    if digest is not None:
        raw = parse_digest(digest)
    elif tx_hash is not None and log_index is not None:
        found = interaction_at(ledger, tx_hash, log_index)
        raw, digest = bytes.fromhex(found.digest[2:]), found.digest
    session.ensure_funded(signer.address)
    Transactor(session.w3, signer).transact(
        ledger.contract.functions.fileDispute(institution, period, raw, keccak(text=reason))
    )
    click.echo(f"{institution} disputed {'interaction ' + digest if digest else 'its statement'} of period {period}")


@click.command()
@click.option("--wallet", required=True, help="The institution's signer keystore (it signed the original).")
@click.option("--interaction", "digest", help="The EIP-712 digest (0x...) of the recorded interaction to reverse.")
@click.option("--tx", "tx_hash", help="With --log-index: the transaction that recorded the interaction.")
@click.option("--log-index", type=click.IntRange(0), help="With --tx: the interaction's log index (as exported).")
@click.option("--nonce", type=click.IntRange(0, 2**256 - 1), help="Or: the nonce the institution signed it with.")
@click.option(
    "--units",
    type=click.IntRange(1, 2**64 - 1),
    help="Units to reverse (default: all the original's units; fewer reverse part of it).",
)
@click.option("--reason", required=True, help="The explanation; only its keccak256 goes on chain.")
@VALID_FOR
@OUTPUT
@click.pass_context
def reverse(
    ctx: click.Context,
    wallet: str,
    digest: str | None,
    tx_hash: str | None,
    log_index: int | None,
    nonce: int | None,
    units: int | None,
    reason: str,
    valid_for: int,
    output: Path,
) -> None:
    """Sign the reversal of an interaction this institution signed and the ledger recorded
    (institution side). Name it by digest (--interaction), by --tx and --log-index (a row of the
    export), or by --nonce.

    The platform's settler records the file with `medmeter institution record-reversal FILE`. The
    original stays as it was on chain and in the settlement; the reversal is its own event and its
    own adjustment line in the report of the period it is recorded in (no units move on chain)."""
    from eth_utils import keccak

    from medmeter.app.pipeline import export_dir_for, update_export
    from medmeter.errors import InputError
    from medmeter.settlement.corrections import institution_rows, original_for_reversal, parse_digest
    from medmeter.signing.consent import reversal, write_message_file

    given = [digest is not None, tx_hash is not None or log_index is not None, nonce is not None]
    if sum(given) != 1 or (given[1] and (tx_hash is None or log_index is None)):
        raise InputError("name the interaction one way: --interaction DIGEST, --tx HASH --log-index N, or --nonce N.")
    wanted = parse_digest(digest) if digest is not None else None
    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    signer = session.keystores.unlock(wallet)
    institution = ledger.institution_signed_by(signer.address, wallet)
    rows = institution_rows(update_export(ledger, export_dir_for(session, ledger)).out_dir, institution)
    original = original_for_reversal(
        ledger, institution, rows, wanted_digest=wanted, tx_hash=tx_hash, log_index=log_index, nonce=nonce
    )
    if ledger.is_reversed(bytes.fromhex(original.digest[2:])):
        raise InputError(f"interaction {original.digest} already has a reversal on chain: nothing more to do.")
    amount = original.interaction.units if units is None else units
    if amount > original.interaction.units:
        raise InputError(
            f"--units {amount} is more than the original's {original.interaction.units} units: reverse at most those."
        )
    deadline = int(time.time()) + valid_for
    reason_hash = keccak(text=reason)
    raw = bytes.fromhex(original.digest[2:])
    message = {
        "institution": institution,
        "originalDigest": raw,
        "units": amount,
        "reasonHash": reason_hash,
        "deadline": deadline,
    }
    signature = reversal(institution, raw, amount, reason_hash, deadline, ledger.domain, signer)
    notes = {
        "reason": reason,
        "original": {"tx_hash": original.tx_hash, "log_index": original.log_index, "block": original.block},
    }
    write_message_file(output, "Reversal", message, ledger.domain, {"institution": signature}, notes)
    click.echo(f"{institution} reverses {amount} units of {original.describe()}: digest {original.digest} -> {output}")
