"""`medmeter institution`: the registry of institutions."""

from __future__ import annotations

from pathlib import Path

import click

from medmeter.cli.context import resolve_institution, session_of
from medmeter.cli.options import UINT64


@click.group()
def institution() -> None:
    """Register, list, suspend, reinstate institutions; rotate keys; set credit lines."""


@institution.command("register")
@click.argument("consent_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--credit-line", type=UINT64, default=0, show_default=True, help="Units it may owe.")
@click.pass_context
def institution_register(ctx: click.Context, consent_file: Path, credit_line: int) -> None:
    """Register the institution whose signed consent is CONSENT_FILE (registrar role).

    The institution makes the file on its own machine with `medmeter consent`; its code, name and
    address come from the file, and the ledger checks the institution's own signature. No key is
    created here."""
    from medmeter.signing.consent import read_message_file

    session = session_of(ctx)
    ledger = session.ledger()
    message, signatures = read_message_file(consent_file, "Registration", ledger.domain)
    code = message["code"].rstrip(b"\0").decode("utf-8", errors="replace")
    ledger.register(
        message["institution"],
        code,
        message["name"],
        credit_line,
        message["deadline"],
        signatures.get("institution", b""),
    )
    click.echo(f"registered {message['name']} ({code}) at {message['institution']}")


@institution.command("list")
@click.pass_context
def institution_list(ctx: click.Context) -> None:
    """List registered institutions."""
    for info in session_of(ctx).ledger(as_operator=False).institutions():
        click.echo(f"{info.code:<10} {info.address} {info.status:<9} line {info.credit_line:>8}  {info.name}")


def _status_command(name: str, help_text: str) -> None:
    @institution.command(name, help=help_text)
    @click.argument("who")
    @click.pass_context
    def command(ctx: click.Context, who: str) -> None:
        session = session_of(ctx)
        address = session.resolve_address(who)
        getattr(session.ledger(), name)(address)
        click.echo(f"{name}d {address}" if name.endswith("e") else f"{name}ed {address}")


_status_command("suspend", "Suspend an institution (keystore name or address): its signatures are refused.")
_status_command("reinstate", "Reinstate a suspended institution (keystore name or address).")


@institution.command("rotate")
@click.argument("rotation_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def institution_rotate(ctx: click.Context, rotation_file: Path) -> None:
    """Submit a key rotation the institution signed with `medmeter rotate-key` (relayer role); it
    takes effect at once and its balance, debt and history stay with its address."""
    from medmeter.signing.consent import read_message_file

    ledger = session_of(ctx).ledger()
    message, signatures = read_message_file(rotation_file, "SignerRotation", ledger.domain)
    ledger.rotate_signer(
        message["institution"],
        message["newSigner"],
        message["nonce"],
        message["deadline"],
        signatures.get("signer", b""),
        signatures.get("new_signer", b""),
    )
    click.echo(f"{message['institution']} now signs with {message['newSigner']}")


@institution.command("submit-cancellation")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def institution_submit_cancellation(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Submit nonce cancellations the institution signed with `medmeter cancel -o` (any account)."""
    from medmeter.signing.consent import read_message_file

    ledger = session_of(ctx).ledger()
    for path in files:
        message, signatures = read_message_file(path, "NonceCancellation", ledger.domain)
        ledger.transact(
            ledger.contract.functions.cancelNoncesBySig(
                message["institution"],
                message["wordIndex"],
                message["mask"],
                message["deadline"],
                signatures.get("institution", b""),
            )
        )
        click.echo(f"cancelled nonces of {message['institution']} (word {message['wordIndex']}) from {path}")


@institution.command("record-reversal")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def institution_record_reversal(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Record reversals the institutions signed with `medmeter reverse` (settler role).

    Each file is checked first: it must name an interaction the institution itself signed and the
    ledger recorded, reverse at most its units, and carry the reason its hash was made from; the
    ledger then checks the institution's signature (no operator key can make one) and that the
    interaction is reversed only once. The original never changes: the reversal is its own event,
    settled as its own adjustment line (`medmeter report`)."""
    from eth_utils import keccak

    from medmeter.app.pipeline import export_dir_for, update_export
    from medmeter.errors import InputError
    from medmeter.settlement.corrections import institution_rows, original_for_reversal
    from medmeter.signing.consent import read_message_file, read_message_notes

    session = session_of(ctx)
    ledger = session.ledger()
    export_dir = update_export(ledger, export_dir_for(session, ledger)).out_dir
    for path in files:
        message, signatures = read_message_file(path, "Reversal", ledger.domain)
        notes = read_message_notes(path)
        reason = notes.get("reason")
        if isinstance(reason, str) and keccak(text=reason) != message["reasonHash"]:
            raise InputError(f"{path}: the reason in the file does not hash to the signed reasonHash: it was edited.")
        hint = notes.get("original") if isinstance(notes.get("original"), dict) else {}
        tx_hash, log_index = hint.get("tx_hash"), hint.get("log_index")
        institution_address = message["institution"]
        original = original_for_reversal(
            ledger,
            institution_address,
            institution_rows(export_dir, institution_address),
            wanted_digest=message["originalDigest"],
            tx_hash=tx_hash if isinstance(tx_hash, str) else None,
            log_index=log_index if isinstance(log_index, int) and not isinstance(log_index, bool) else None,
        )
        if message["units"] > original.interaction.units:
            raise InputError(
                f"{path}: reverses {message['units']} units but the original has {original.interaction.units}: "
                "have the institution sign it again for at most those."
            )
        receipt = ledger.record_reversal(
            institution_address,
            message["originalDigest"],
            message["units"],
            message["reasonHash"],
            message["deadline"],
            signatures.get("institution", b""),
        )
        click.echo(
            f"recorded the reversal of {message['units']} units of {original.describe()} for {institution_address} "
            f"(tx {receipt['transactionHash'].to_0x_hex()}) from {path}"
        )


@institution.group("recover")
def recover() -> None:
    """A lost key: the registrar starts a recovery to a new key, effective only after the ledger's
    recovery delay; the institution's current key can cancel it meanwhile."""


@recover.command("start")
@click.argument("who")
@click.option("--new-signer", required=True, help="Address of the institution's new key.")
@click.pass_context
def recover_start(ctx: click.Context, who: str, new_signer: str) -> None:
    """Start the recovery of WHO's key to --new-signer (registrar role)."""
    session = session_of(ctx)
    ledger = session.ledger()
    address = resolve_institution(session, ledger, who)
    ledger.transact(ledger.contract.functions.startRecovery(address, session.resolve_address(new_signer)))
    pending = ledger.call(ledger.contract.functions.pendingRecovery(address))
    click.echo(f"recovery of {address} to {new_signer} started; it can be completed from {pending[1]} (unix time)")


@recover.command("complete")
@click.argument("who")
@click.pass_context
def recover_complete(ctx: click.Context, who: str) -> None:
    """Complete WHO's pending recovery once its delay has passed (any account)."""
    session = session_of(ctx)
    ledger = session.ledger()
    address = resolve_institution(session, ledger, who)
    ledger.transact(ledger.contract.functions.completeRecovery(address))
    click.echo(f"recovery of {address} completed")


@recover.command("cancel")
@click.option("--wallet", required=True, help="The institution's current signer keystore (institution side).")
@click.pass_context
def recover_cancel(ctx: click.Context, wallet: str) -> None:
    """Cancel a pending recovery of this institution, from its current signer's own address."""
    from medmeter.chain.rpc import Transactor

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    signer = session.keystores.unlock(wallet)
    address = ledger.institution_signed_by(signer.address, wallet)
    session.ensure_funded(signer.address)
    Transactor(session.w3, signer).transact(ledger.contract.functions.cancelRecovery(address))
    click.echo(f"cancelled the pending recovery of {address}")


@institution.command("credit-line")
@click.argument("who")
@click.argument("units", type=UINT64)
@click.pass_context
def institution_credit_line(ctx: click.Context, who: str, units: int) -> None:
    """Set the credit line of WHO to UNITS."""
    session = session_of(ctx)
    address = session.resolve_address(who)
    session.ledger().set_credit_line(address, units)
    click.echo(f"credit line of {address} is now {units}")
