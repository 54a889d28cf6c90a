"""Multi-step operator tasks shared by the CLI, the demo and the brownie scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from medmeter.app.session import Session
from medmeter.chain.ledger import Ledger
from medmeter.errors import InputError
from medmeter.intake.categories import CATEGORIES, DEFAULT_PLATFORM_FEE_BPS, category_name
from medmeter.signing.interaction import SignedInteraction
from medmeter.signing.traffic import SimulatedInstitution, Tariff, simulate

# Seconds a consent the demo signs stays valid: it is submitted at once.
CONSENT_VALID_FOR = 3600


@dataclass(frozen=True)
class InstitutionSpec:
    wallet: str  # keystore name
    code: str
    name: str
    credit_line: int


DEMO_INSTITUTIONS: tuple[InstitutionSpec, ...] = (
    InstitutionSpec("clinic-riverside", "PCI-0001", "Riverside Community Clinic", 2_000),
    InstitutionSpec("clinic-hillview", "PCI-0002", "Hillview Township Hospital", 2_000),
    InstitutionSpec("clinic-lakeside", "PCI-0003", "Lakeside Primary Care Centre", 1_500),
    InstitutionSpec("clinic-northgate", "PCI-0004", "Northgate Health Station", 1_500),
    InstitutionSpec("clinic-eastfield", "PCI-0005", "Eastfield Family Practice", 1_000),
    InstitutionSpec("clinic-westbrook", "PCI-0006", "Westbrook Rural Clinic", 1_000),
)


# The demo's operating roles, each on its own keystore (role word -> keystore name), as
# samples/roles.json hands them out for the walk-through: the operator (the deployer) keeps only
# the admin role and the pauser role.
DEMO_ROLE_WALLETS = {"registrar": "registrar", "tariff": "tariff", "relayer": "relayer", "settler": "settler"}


def role_wallet_addresses(session: Session, wallets: dict[str, str]) -> dict[str, str]:
    """{role word: address} for `wallets` (role word -> keystore name), creating the missing keystores."""
    for wallet in wallets.values():
        if not session.keystores.exists(wallet):
            session.keystores.create(wallet)
    return {word: session.keystores.address(wallet) for word, wallet in wallets.items()}


def register_institutions(session: Session, specs: tuple[InstitutionSpec, ...], registrar: Ledger) -> list[str]:
    """The demo's institutions: each key signs its own registration consent (the demo keeps every
    key in one workspace; the documented flow has each clinic run `medmeter consent` on its own
    machine), and the registrar registers it unless it already is."""
    from medmeter.signing.consent import registration

    ledger = registrar
    addresses = []
    for spec in specs:
        if not session.keystores.exists(spec.wallet):
            session.keystores.create(spec.wallet)
        address = session.keystores.address(spec.wallet)
        if ledger.institution(address).status == "unregistered":
            key = session.keystores.unlock(spec.wallet)
            deadline = int(time.time()) + CONSENT_VALID_FOR
            signature = registration(address, spec.code, spec.name, deadline, ledger.domain, key)
            ledger.register(address, spec.code, spec.name, spec.credit_line, deadline, signature)
        addresses.append(address)
    return addresses


def apply_default_tariff(ledger: Ledger) -> None:
    for category in CATEGORIES:
        ledger.set_rate(
            category.id, category.default_sync_units_per_record, category.default_fetch_units_per_record, category.name
        )
    ledger.set_platform_fee(DEFAULT_PLATFORM_FEE_BPS)


def read_tariff(ledger: Ledger) -> Tariff:
    rates = {}
    for category in CATEGORIES:
        sync, fetch, defined = ledger.call(ledger.contract.functions.rateOf(category.id))
        if defined:
            rates[category.id] = (int(sync), int(fetch))
    return Tariff(rates, int(ledger.call(ledger.contract.functions.platformFeeBps())))


def simulate_traffic(
    session: Session,
    wallets: list[str],
    count: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    validate_fhir: bool = True,
) -> list[SignedInteraction]:
    """Signed synthetic traffic between the institutions behind `wallets`; nonces reserved in the nonce book."""
    ledger = session.ledger(as_operator=False)
    tariff = read_tariff(ledger)
    if not tariff.rates:
        raise InputError("no tariff is set on the ledger yet: set one with `medmeter tariff default` first.")
    if len(wallets) < 2:
        raise InputError(
            f"simulation needs at least two institutions (exchanges go between them), got {len(wallets)}: "
            "pass --wallet twice or more, or leave --wallet out to use every registered institution."
        )
    participants = []
    for wallet in wallets:
        signer = session.keystores.unlock(wallet)
        address = session.keystores.address(wallet)
        info = ledger.institution(address)
        position = ledger.position(address)
        participants.append(
            SimulatedInstitution(
                address=address,
                signer=signer,
                credit_line=info.credit_line,
                balance=position.balance,
                debt=position.debt,
                first_nonce=session.nonce_book.peek(address),
            )
        )
    now = int(session.w3.eth.get_block("latest")["timestamp"])
    items = simulate(
        participants, tariff, ledger.domain, count, seed, now, progress=progress, validate_fhir=validate_fhir
    )
    for participant in participants:
        used = sum(1 for item in items if item.interaction.institution == participant.address)
        session.nonce_book.reserve(participant.address, used)
    return items


def tariff_table(ledger: Ledger) -> str:
    tariff = read_tariff(ledger)
    lines = [f"{'category':<14} {'id':>3} {'sync/record':>12} {'fetch/record':>13}"]
    for category_id, (sync, fetch) in sorted(tariff.rates.items()):
        lines.append(f"{category_name(category_id):<14} {category_id:>3} {sync:>12} {fetch:>13}")
    lines.append(f"platform fee on exchanges: {tariff.fee_bps} bps")
    return "\n".join(lines)


def wait_for_next_block(ledger: Ledger, timeout: float = 10.0) -> None:
    """On an automining node a period needs at least one block of its own."""
    start = ledger.w3.eth.block_number
    deadline = time.monotonic() + timeout
    while ledger.w3.eth.block_number == start and time.monotonic() < deadline:
        ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        time.sleep(0.05)
