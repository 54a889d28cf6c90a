"""Every rule and every refusal of MeteringLedger, checked against a live anvil.

Expected units are derived from the tariff as the chain holds it (`rateOf`, `platformFeeBps`) and from
the domain rules in design.md, never from constants copied out of the contract or the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.types import TxReceipt

from medmeter.chain.ledger import TRANSACTION_GAS_CAP, Ledger, batch_gas_limit, code_to_bytes32
from medmeter.errors import LedgerRevertError
from medmeter.relay.engine import relay
from medmeter.signing.interaction import ZERO_ADDRESS, Kind, SignedInteraction
from tests.support.chains import (
    FAR_FUTURE,
    LedgerEnv,
    batch_refusal,
    event_args,
    expect_revert,
    fee_bps_of,
    hex32,
    positions_of,
    rate_of,
    register_with_consent,
    rotate_with_consent,
    send_unchecked,
)

CATEGORY = 2  # any category the default tariff defines; every expectation reads its rates from the chain
UNDEFINED_CATEGORY = 999  # the default tariff defines a handful of small ids, never this one


def registration_fn(env: LedgerEnv, account: LocalAccount, code: str, name: str = "x", credit_line: int = 1) -> Any:
    """`registerInstitution` for `account` with its valid consent (so a refusal is about something else)."""
    from medmeter.signing.consent import registration

    signature = registration(account.address, code, name, FAR_FUTURE, env.ledger.domain, account)
    return env.ledger.contract.functions.registerInstitution(
        account.address, code_to_bytes32(code), name, credit_line, FAR_FUTURE, signature
    )


def constant(env: LedgerEnv, name: str) -> int:
    return int(env.ledger.call(getattr(env.ledger.contract.functions, name)()))


def credit_line_of(env: LedgerEnv, address: str) -> int:
    return env.ledger.institution(address).credit_line


def balance(env: LedgerEnv, who: LocalAccount | str) -> int:
    return env.ledger.position(who if isinstance(who, str) else who.address).balance


def debt(env: LedgerEnv, who: LocalAccount | str) -> int:
    return env.ledger.position(who if isinstance(who, str) else who.address).debt


def credit(env: LedgerEnv, who: LocalAccount, records: int, category: int = CATEGORY) -> int:
    """Sync `records` records for `who`; returns the units credited according to the on-chain tariff."""
    env.record(env.signed(Kind.SYNC, who, records=records, category=category))
    return records * rate_of(env.ledger, category)[0]


def all_addresses(env: LedgerEnv) -> list[str]:
    return [account.address for account in env.institutions]


def sorted_transfers(transfers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(transfers, key=lambda t: (t["from"], t["to"], t["value"]))


def net_transfers(ledger: Ledger, receipt: TxReceipt) -> dict[str, int]:
    """Units minted (positive) or burned (negative) per account according to the receipt's Transfer events."""
    net: dict[str, int] = {}
    for transfer in event_args(ledger, receipt, "Transfer"):
        assert ZERO_ADDRESS in (transfer["from"], transfer["to"]), "units moved between holders"
        if transfer["from"] == ZERO_ADDRESS:
            net[transfer["to"]] = net.get(transfer["to"], 0) + transfer["value"]
        else:
            net[transfer["from"]] = net.get(transfer["from"], 0) - transfer["value"]
    return net


def supply_and_sum_of_balances(env: LedgerEnv) -> tuple[int, int]:
    return env.ledger.total_supply(), sum(balance(env, address) for address in all_addresses(env))


# --------------------------------------------------------------------------- units: sync, fetch, exchange


@pytest.mark.parametrize("category", [1, 3, 7])
def test_sync_mints_records_times_sync_rate_and_emits_mint_and_interaction_events(
    env: LedgerEnv, category: int
) -> None:
    clinic = env.institutions[0]
    sync_rate, _ = rate_of(env.ledger, category)
    records = 17
    item = env.signed(Kind.SYNC, clinic, records=records, category=category, data_hash="0x" + "5a" * 32)
    supply_before = env.ledger.total_supply()

    receipt = env.record(item)

    units = records * sync_rate
    assert balance(env, clinic) == units
    assert debt(env, clinic) == 0
    assert env.ledger.total_supply() == supply_before + units
    assert event_args(env.ledger, receipt, "Transfer") == [{"from": ZERO_ADDRESS, "to": clinic.address, "value": units}]
    assert event_args(env.ledger, receipt, "InteractionRecorded") == [
        {
            "institution": clinic.address,
            "counterparty": ZERO_ADDRESS,
            "kind": int(Kind.SYNC),
            "category": category,
            "records": records,
            "units": units,
            "fee": 0,
            "dataHash": bytes.fromhex("5a" * 32),
            "nonce": item.interaction.nonce,
        }
    ]


def test_fetch_burns_records_times_fetch_rate_and_emits_burn_event(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    credited = credit(env, clinic, records=50 * fetch_rate)  # enough balance to pay 11 fetched records outright
    records = 11
    item = env.signed(Kind.FETCH, clinic, records=records, data_hash="0x" + "c3" * 32)

    receipt = env.record(item)

    units = records * fetch_rate
    assert 0 < units <= credited
    assert balance(env, clinic) == credited - units
    assert debt(env, clinic) == 0
    assert env.ledger.total_supply() == credited - units
    assert event_args(env.ledger, receipt, "Transfer") == [{"from": clinic.address, "to": ZERO_ADDRESS, "value": units}]
    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert recorded == {
        "institution": clinic.address,
        "counterparty": ZERO_ADDRESS,
        "kind": int(Kind.FETCH),
        "category": CATEGORY,
        "records": records,
        "units": units,
        "fee": 0,
        "dataHash": bytes.fromhex("c3" * 32),
        "nonce": item.interaction.nonce,
    }


@pytest.mark.parametrize("fee_bps", [0, 1, 333, 9_999, 10_000])
def test_exchange_debits_consumer_full_value_and_credits_provider_value_less_fee(env: LedgerEnv, fee_bps: int) -> None:
    consumer, provider = env.institutions[0], env.institutions[1]
    env.ledger.set_platform_fee(fee_bps)
    assert fee_bps_of(env.ledger) == fee_bps
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    consumer_credit = credit(env, consumer, records=40 * fetch_rate)
    records = 37  # odd, so that most fees round down
    item = env.signed(Kind.EXCHANGE, consumer, counterparty=provider.address, records=records)
    supply_before = env.ledger.total_supply()

    receipt = env.record(item)

    value = records * fetch_rate
    fee = value * fee_bps // 10_000
    assert balance(env, consumer) == consumer_credit - value
    assert balance(env, provider) == value - fee
    assert env.ledger.total_supply() == supply_before - fee  # the fee is burned: nobody is credited it
    expected_transfers = [{"from": consumer.address, "to": ZERO_ADDRESS, "value": value}]
    if value - fee:
        expected_transfers.append({"from": ZERO_ADDRESS, "to": provider.address, "value": value - fee})
    # one Transfer per institution touched; the contract does not promise an order between them
    assert sorted_transfers(event_args(env.ledger, receipt, "Transfer")) == sorted_transfers(expected_transfers)
    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert (recorded["institution"], recorded["counterparty"]) == (consumer.address, provider.address)
    assert (recorded["kind"], recorded["units"], recorded["fee"]) == (int(Kind.EXCHANGE), value, fee)
    assert (recorded["records"], recorded["category"], recorded["nonce"]) == (records, CATEGORY, item.interaction.nonce)


def test_exchange_credit_repays_the_providers_debt_first(env: LedgerEnv) -> None:
    consumer, provider = env.institutions[0], env.institutions[1]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    env.record(env.signed(Kind.FETCH, provider, records=3))
    provider_debt = 3 * fetch_rate
    assert debt(env, provider) == provider_debt
    records = 20
    fee = records * fetch_rate * fee_bps_of(env.ledger) // 10_000
    provider_credit = records * fetch_rate - fee
    assert provider_credit > provider_debt

    receipt = env.record(env.signed(Kind.EXCHANGE, consumer, counterparty=provider.address, records=records))

    assert debt(env, provider) == 0
    assert balance(env, provider) == provider_credit - provider_debt
    mints = [t for t in event_args(env.ledger, receipt, "Transfer") if t["to"] == provider.address]
    assert mints == [{"from": ZERO_ADDRESS, "to": provider.address, "value": provider_credit - provider_debt}]


# --------------------------------------------------------------------------- credit line and debt


def test_debit_beyond_balance_burns_the_balance_and_records_the_shortfall_as_debt(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    credited = credit(env, clinic, records=3)
    records = credited // fetch_rate + 5  # worth more than the balance, far below the credit line
    value = records * fetch_rate
    assert credited < value <= credited + credit_line_of(env, clinic.address)

    receipt = env.record(env.signed(Kind.FETCH, clinic, records=records))

    assert balance(env, clinic) == 0
    assert debt(env, clinic) == value - credited
    assert env.ledger.total_supply() == 0
    # only what existed is burned; the debt is not a token movement
    assert event_args(env.ledger, receipt, "Transfer") == [
        {"from": clinic.address, "to": ZERO_ADDRESS, "value": credited}
    ]
    assert event_args(env.ledger, receipt, "InteractionRecorded")[0]["units"] == value


def test_debit_with_no_balance_emits_no_transfer(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    receipt = env.record(env.signed(Kind.FETCH, clinic, records=2))
    assert event_args(env.ledger, receipt, "Transfer") == []
    assert debt(env, clinic) == 2 * rate_of(env.ledger, CATEGORY)[1]


def test_debit_up_to_the_credit_line_is_accepted_and_one_unit_more_is_refused_with_credit_line_exceeded(
    env: LedgerEnv,
) -> None:
    clinic = env.institutions[0]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    line = 7 * fetch_rate  # a multiple of the rate, so the line can be reached exactly
    env.ledger.set_credit_line(clinic.address, line)

    env.record(env.signed(Kind.FETCH, clinic, records=7))
    assert (balance(env, clinic), debt(env, clinic)) == (0, line)

    refused = env.signed(Kind.FETCH, clinic, records=1)
    error = batch_refusal(env, refused)
    assert error.error_name == "CreditLineExceeded"
    assert error.error_args == {
        "institution": clinic.address,
        "balance": 0,
        "debt": line,
        "creditLine": line,
        "debit": fetch_rate,
    }


def test_credit_line_exceeded_reports_balance_and_debt_before_the_debit(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    credited = credit(env, clinic, records=4)
    line = credit_line_of(env, clinic.address)
    records = (credited + line) // fetch_rate + 1  # one record too many for balance plus line
    error = batch_refusal(env, env.signed(Kind.FETCH, clinic, records=records))
    assert error.error_name == "CreditLineExceeded"
    assert error.error_args == {
        "institution": clinic.address,
        "balance": credited,
        "debt": 0,
        "creditLine": line,
        "debit": records * fetch_rate,
    }
    assert (balance(env, clinic), debt(env, clinic)) == (credited, 0)


def test_later_credits_repay_debt_before_any_balance_is_minted(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    sync_rate, fetch_rate = rate_of(env.ledger, CATEGORY)
    env.record(env.signed(Kind.FETCH, clinic, records=100))
    owed = 100 * fetch_rate
    first_records = (owed - 1) // sync_rate  # credits strictly less than the debt
    assert first_records >= 1

    first = env.record(env.signed(Kind.SYNC, clinic, records=first_records))
    assert balance(env, clinic) == 0  # nothing minted while any debt remains
    assert debt(env, clinic) == owed - first_records * sync_rate
    assert event_args(env.ledger, first, "Transfer") == []
    assert env.ledger.total_supply() == 0

    remaining = debt(env, clinic)
    second_records = remaining // sync_rate + 3  # more than the remaining debt
    second = env.record(env.signed(Kind.SYNC, clinic, records=second_records))
    surplus = second_records * sync_rate - remaining
    assert (balance(env, clinic), debt(env, clinic)) == (surplus, 0)
    assert event_args(env.ledger, second, "Transfer") == [
        {"from": ZERO_ADDRESS, "to": clinic.address, "value": surplus}
    ]
    assert env.ledger.total_supply() == surplus


def test_lowering_the_credit_line_below_the_debt_refuses_debits_but_not_credits(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    sync_rate, fetch_rate = rate_of(env.ledger, CATEGORY)
    env.record(env.signed(Kind.FETCH, clinic, records=10))
    owed = 10 * fetch_rate
    receipt = env.ledger.set_credit_line(clinic.address, owed - 1)
    [changed] = event_args(env.ledger, receipt, "CreditLineChanged")
    assert changed["newCreditLine"] == owed - 1

    error = batch_refusal(env, env.signed(Kind.FETCH, clinic, records=1))
    assert error.error_name == "CreditLineExceeded"
    assert (error.error_args["debt"], error.error_args["creditLine"]) == (owed, owed - 1)

    env.record(env.signed(Kind.SYNC, clinic, records=1))
    assert debt(env, clinic) == owed - sync_rate


def test_total_supply_equals_the_sum_of_balances_after_mixed_traffic(env: LedgerEnv) -> None:
    a, b, c = env.institutions
    env.ledger.set_platform_fee(777)
    env.record(
        env.signed(Kind.SYNC, a, records=30),
        env.signed(Kind.FETCH, b, records=4),
        env.signed(Kind.EXCHANGE, a, counterparty=b.address, records=9),
        env.signed(Kind.SYNC, c, records=2, category=3),
        env.signed(Kind.EXCHANGE, c, counterparty=a.address, records=13),
        env.signed(Kind.FETCH, a, records=1),
    )
    supply, summed = supply_and_sum_of_balances(env)
    assert supply == summed
    for address in all_addresses(env):
        position = env.ledger.position(address)
        assert position.balance == 0 or position.debt == 0


def test_a_batch_emits_one_net_transfer_per_institution_equal_to_its_balance_change(env: LedgerEnv) -> None:
    a, b, c = env.institutions
    sync_rate, fetch_rate = rate_of(env.ledger, CATEGORY)
    credit(env, b, records=20)
    before = positions_of(env.ledger, all_addresses(env))
    supply_before = env.ledger.total_supply()

    receipt = env.record(
        env.signed(Kind.SYNC, a, records=10),
        env.signed(Kind.FETCH, a, records=2),
        env.signed(Kind.FETCH, b, records=3),
        env.signed(Kind.SYNC, b, records=1),
        # c is minted and then burned exactly as much: its net change, and so its Transfer, is nothing
        env.signed(Kind.SYNC, c, records=fetch_rate),
        env.signed(Kind.FETCH, c, records=sync_rate),
    )

    transfers = event_args(env.ledger, receipt, "Transfer")
    touched = [t["to"] if t["from"] == ZERO_ADDRESS else t["from"] for t in transfers]
    assert len(touched) == len(set(touched)), "more than one Transfer for an institution in one call"
    net = net_transfers(env.ledger, receipt)
    assert c.address not in net
    after = positions_of(env.ledger, all_addresses(env))
    for address in all_addresses(env):
        assert net.get(address, 0) == after[address][0] - before[address][0]
    assert env.ledger.total_supply() - supply_before == sum(net.values())
    assert len(event_args(env.ledger, receipt, "InteractionRecorded")) == 6


def test_a_batch_touching_many_institutions_keeps_transfers_and_total_supply_exact(env: LedgerEnv) -> None:
    extra = [Account.create() for _ in range(45)]
    for index, account in enumerate(extra):
        register_with_consent(env.ledger, account, f"MANY-{index:03d}", f"Many {index}", 10_000)
    everyone = [*env.institutions, *extra]
    addresses = [account.address for account in everyone]
    credit(env, everyone[0], records=50)
    before = positions_of(env.ledger, addresses)
    supply_before = env.ledger.total_supply()

    items = []
    for index, account in enumerate(everyone):
        items.append(env.signed(Kind.SYNC, account, records=1 + index % 7))
    for index, account in enumerate(everyone):
        provider = everyone[(index * 7 + 3) % len(everyone)]
        if provider is not account:
            items.append(env.signed(Kind.EXCHANGE, account, counterparty=provider.address, records=1 + index % 5))
    for index, account in enumerate(everyone[::2]):
        items.append(env.signed(Kind.FETCH, account, records=1 + index % 3))
    receipt = env.record(*items)

    assert len(event_args(env.ledger, receipt, "InteractionRecorded")) == len(items)
    net = net_transfers(env.ledger, receipt)
    after = positions_of(env.ledger, addresses)
    for address in addresses:
        assert net.get(address, 0) == after[address][0] - before[address][0], address
    assert env.ledger.total_supply() - supply_before == sum(net.values())
    assert env.ledger.total_supply() == sum(balance for balance, _ in after.values())


# --------------------------------------------------------------------------- ERC-20 surface


def test_erc20_metadata_reads_as_a_whole_unit_token(env: LedgerEnv) -> None:
    functions = env.ledger.contract.functions
    assert isinstance(functions.name().call(), str) and functions.name().call()
    assert isinstance(functions.symbol().call(), str) and functions.symbol().call()
    assert functions.decimals().call() == 0
    a, b = env.institutions[0], env.institutions[1]
    credit(env, a, records=5)
    assert functions.allowance(a.address, b.address).call() == 0
    assert functions.balanceOf(a.address).call() == balance(env, a) > 0


@pytest.mark.parametrize(
    "call",
    [
        lambda f, a, b: f.transfer(b, 1),
        lambda f, a, b: f.transferFrom(a, b, 1),
        lambda f, a, b: f.approve(b, 1),
        lambda f, a, b: f.transfer(b, 0),
    ],
    ids=["transfer", "transferFrom", "approve", "transfer-zero"],
)
def test_units_cannot_be_transferred_or_approved(env: LedgerEnv, call: Callable[[Any, str, str], Any]) -> None:
    holder, other = env.institutions[0], env.institutions[1]
    credit(env, holder, records=5)  # a holder with units, so a refusal is not just "insufficient balance"
    fn = call(env.ledger.contract.functions, holder.address, other.address)
    error = expect_revert(env.ledger, fn, sender=holder.address)
    assert error.error_name == "UnitsNotTransferable"
    assert balance(env, other) == 0


# --------------------------------------------------------------------------- registry


def test_register_stores_the_profile_and_indexes_it(env: LedgerEnv) -> None:
    newcomer = Account.create()
    count_before = env.ledger.call(env.ledger.contract.functions.institutionCount())
    receipt = register_with_consent(env.ledger, newcomer, "NEW-001", "Newcomer Clinic", 4_321)

    [registered] = event_args(env.ledger, receipt, "InstitutionRegistered")
    assert registered == {
        "institution": newcomer.address,
        "code": code_to_bytes32("NEW-001"),
        "name": "Newcomer Clinic",
        "creditLine": 4_321,
    }
    info = env.ledger.institution(newcomer.address)
    assert (info.code, info.name, info.signer, info.status, info.credit_line) == (
        "NEW-001",
        "Newcomer Clinic",
        newcomer.address,
        "active",
        4_321,
    )
    functions = env.ledger.contract.functions
    assert functions.institutionByCode(code_to_bytes32("NEW-001")).call() == newcomer.address
    assert functions.institutionBySigner(newcomer.address).call() == newcomer.address
    assert functions.institutionCount().call() == count_before + 1
    assert functions.institutionAt(count_before).call() == newcomer.address


def test_registering_an_address_twice_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    fn = registration_fn(env, clinic, "OTHER")
    error = expect_revert(env.ledger, fn)
    assert (error.error_name, error.error_args) == ("InstitutionAlreadyRegistered", {"institution": clinic.address})


def test_registering_a_taken_code_is_refused_naming_the_holder(env: LedgerEnv) -> None:
    holder = env.institutions[1]
    fn = registration_fn(env, Account.create(), env.ledger.institution(holder.address).code)
    error = expect_revert(env.ledger, fn)
    assert error.error_name == "InstitutionCodeTaken"
    # codes are shown as the text they were registered as, not as bytes32 hex
    assert error.error_args == {"code": repr(env.ledger.institution(holder.address).code), "holder": holder.address}


def test_registering_the_zero_address_or_an_empty_code_is_refused(env: LedgerEnv) -> None:
    functions = env.ledger.contract.functions
    fn = functions.registerInstitution(ZERO_ADDRESS, code_to_bytes32("Z"), "x", 1, FAR_FUTURE, b"\0" * 65)
    error = expect_revert(env.ledger, fn)
    assert (error.error_name, error.error_args) == ("InvalidInstitutionAddress", {"institution": ZERO_ADDRESS})
    newcomer = Account.create()
    fn = functions.registerInstitution(newcomer.address, b"\0" * 32, "x", 1, FAR_FUTURE, b"\0" * 65)
    error = expect_revert(env.ledger, fn)
    assert (error.error_name, error.error_args) == ("InvalidInstitutionCode", {"code": hex32(b"\0" * 32)})


def test_registering_an_address_that_signs_for_another_institution_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    new_key = Account.create()
    rotate_with_consent(env, clinic.address, clinic, new_key)
    fn = registration_fn(env, new_key, "KEY")
    error = expect_revert(env.ledger, fn)
    assert error.error_name == "SignerAlreadyInUse"
    assert error.error_args == {"signer": new_key.address, "institution": clinic.address}


def test_suspend_and_reinstate_change_the_status_and_refuse_repeats(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    functions = env.ledger.contract.functions

    receipt = env.ledger.suspend(clinic.address)
    assert event_args(env.ledger, receipt, "InstitutionSuspended") == [{"institution": clinic.address}]
    assert env.ledger.institution(clinic.address).status == "suspended"
    error = expect_revert(env.ledger, functions.suspendInstitution(clinic.address))
    assert error.error_name == "InstitutionStatusUnchanged"
    assert error.error_args == {"institution": clinic.address, "status": "suspended"}

    receipt = env.ledger.reinstate(clinic.address)
    assert event_args(env.ledger, receipt, "InstitutionReinstated") == [{"institution": clinic.address}]
    assert env.ledger.institution(clinic.address).status == "active"
    error = expect_revert(env.ledger, functions.reinstateInstitution(clinic.address))
    assert error.error_name == "InstitutionStatusUnchanged"
    assert error.error_args == {"institution": clinic.address, "status": "active"}


@pytest.mark.parametrize(
    "function", ["suspendInstitution", "reinstateInstitution", "setCreditLine", "rotateSigner", "startRecovery"]
)
def test_registry_changes_to_an_unregistered_address_are_refused(env: LedgerEnv, function: str) -> None:
    stranger = Account.create().address
    arguments = {
        "suspendInstitution": (stranger,),
        "reinstateInstitution": (stranger,),
        "setCreditLine": (stranger, 10),
        "rotateSigner": (stranger, Account.create().address, 0, FAR_FUTURE, b"\0" * 65, b"\0" * 65),
        "startRecovery": (stranger, Account.create().address),
    }[function]
    error = expect_revert(env.ledger, getattr(env.ledger.contract.functions, function)(*arguments))
    assert (error.error_name, error.error_args) == ("InstitutionNotRegistered", {"institution": stranger})


def test_a_suspended_institution_cannot_sign_and_its_position_is_frozen(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    credit(env, clinic, records=9)
    frozen = env.ledger.position(clinic.address)
    env.ledger.suspend(clinic.address)

    for kind in (Kind.SYNC, Kind.FETCH):
        error = batch_refusal(env, env.signed(kind, clinic, records=1))
        assert error.error_name == "InstitutionNotActive"
        assert error.error_args == {"institution": clinic.address, "status": "suspended"}
    error = batch_refusal(env, env.signed(Kind.EXCHANGE, clinic, counterparty=env.institutions[1].address))
    assert error.error_name == "InstitutionNotActive"
    assert env.ledger.position(clinic.address) == frozen

    env.ledger.reinstate(clinic.address)
    env.record(env.signed(Kind.SYNC, clinic, records=1))
    assert balance(env, clinic) > frozen.balance


def test_a_suspended_institution_cannot_be_credited_as_exchange_provider(env: LedgerEnv) -> None:
    consumer, provider = env.institutions[0], env.institutions[1]
    credit(env, consumer, records=20)
    env.ledger.suspend(provider.address)
    before = positions_of(env.ledger, all_addresses(env))

    error = batch_refusal(env, env.signed(Kind.EXCHANGE, consumer, counterparty=provider.address, records=2))

    assert error.error_name == "InstitutionNotActive"
    assert error.error_args == {"institution": provider.address, "status": "suspended"}
    assert positions_of(env.ledger, all_addresses(env)) == before


def test_unregistered_institutions_are_refused_as_signer_and_as_provider(env: LedgerEnv) -> None:
    stranger = Account.create()
    error = batch_refusal(env, env.signed(Kind.SYNC, stranger))
    assert (error.error_name, error.error_args) == ("InstitutionNotRegistered", {"institution": stranger.address})

    consumer = env.institutions[0]
    error = batch_refusal(env, env.signed(Kind.EXCHANGE, consumer, counterparty=stranger.address))
    assert (error.error_name, error.error_args) == ("InstitutionNotRegistered", {"institution": stranger.address})


# --------------------------------------------------------------------------- key rotation


def test_after_rotation_the_old_key_is_refused_and_the_new_key_signs_for_the_same_account(env: LedgerEnv) -> None:
    clinic, provider = env.institutions[0], env.institutions[1]
    _, fetch_rate = rate_of(env.ledger, CATEGORY)
    env.record(env.signed(Kind.FETCH, clinic, records=5))  # leave a debt that must survive the rotation
    credit(env, provider, records=3)
    before = env.ledger.position(clinic.address)
    assert before.debt == 5 * fetch_rate
    signed_before_rotation = env.signed(Kind.SYNC, clinic, records=4)  # signed but not yet relayed
    new_key = Account.create()

    receipt = rotate_with_consent(env, clinic.address, clinic, new_key)

    assert event_args(env.ledger, receipt, "SignerRotated") == [
        {"institution": clinic.address, "previousSigner": clinic.address, "newSigner": new_key.address}
    ]
    assert env.ledger.position(clinic.address) == before
    assert env.ledger.institution(clinic.address).signer == new_key.address
    functions = env.ledger.contract.functions
    assert functions.institutionBySigner(new_key.address).call() == clinic.address
    assert functions.institutionBySigner(clinic.address).call() == ZERO_ADDRESS

    for refused in (signed_before_rotation, env.signed(Kind.SYNC, clinic, records=4)):
        error = batch_refusal(env, refused)
        assert error.error_name == "InvalidSigner"
        assert error.error_args == {
            "institution": clinic.address,
            "recovered": clinic.address,
            "expected": new_key.address,
        }

    accepted = env.signed(Kind.EXCHANGE, clinic, signer=new_key, counterparty=provider.address, records=1)
    receipt = env.record(accepted)
    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert recorded["institution"] == clinic.address  # history stays with the institution address
    assert debt(env, clinic) == before.debt + fetch_rate


def test_rotating_to_a_signer_already_in_use_is_refused(env: LedgerEnv) -> None:
    clinic, other = env.institutions[0], env.institutions[1]
    functions = env.ledger.contract.functions

    def rotation(new_signer: str) -> Any:
        return functions.rotateSigner(clinic.address, new_signer, 0, FAR_FUTURE, b"\0" * 65, b"\0" * 65)

    error = expect_revert(env.ledger, rotation(other.address))
    assert error.error_name == "SignerAlreadyInUse"
    assert error.error_args == {"signer": other.address, "institution": other.address}
    error = expect_revert(env.ledger, rotation(clinic.address))
    assert error.error_args == {"signer": clinic.address, "institution": clinic.address}
    error = expect_revert(env.ledger, rotation(ZERO_ADDRESS))
    assert (error.error_name, error.error_args) == ("InvalidSignerAddress", {"signer": ZERO_ADDRESS})


def test_a_rotated_out_key_can_be_rotated_back_in(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    new_key = Account.create()
    rotate_with_consent(env, clinic.address, clinic, new_key)
    rotate_with_consent(env, clinic.address, new_key, clinic)
    env.record(env.signed(Kind.SYNC, clinic))
    error = batch_refusal(env, env.signed(Kind.SYNC, clinic, signer=new_key))
    assert error.error_name == "InvalidSigner"


# --------------------------------------------------------------------------- tariff


def test_set_rate_bumps_the_tariff_version_emits_and_prices_new_interactions(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    functions = env.ledger.contract.functions
    version = functions.tariffVersion().call()
    category = 4242

    receipt = env.ledger.set_rate(category, 13, 29, "genomics")

    assert functions.tariffVersion().call() == version + 1
    assert event_args(env.ledger, receipt, "TariffRateSet") == [
        {
            "version": version + 1,
            "category": category,
            "syncUnitsPerRecord": 13,
            "fetchUnitsPerRecord": 29,
            "label": "genomics",
        }
    ]
    assert rate_of(env.ledger, category) == (13, 29)
    env.record(env.signed(Kind.SYNC, clinic, category=category, records=3))
    assert balance(env, clinic) == 3 * 13
    env.ledger.set_rate(category, 2, 5, "genomics")
    assert functions.tariffVersion().call() == version + 2
    env.record(env.signed(Kind.FETCH, clinic, category=category, records=3))
    assert balance(env, clinic) == 3 * 13 - 3 * 5


def test_set_platform_fee_bumps_the_version_emits_and_refuses_more_than_100_percent(env: LedgerEnv) -> None:
    functions = env.ledger.contract.functions
    version = functions.tariffVersion().call()
    receipt = env.ledger.set_platform_fee(10_000)
    assert event_args(env.ledger, receipt, "PlatformFeeSet") == [{"version": version + 1, "feeBps": 10_000}]
    assert functions.tariffVersion().call() == version + 1
    assert fee_bps_of(env.ledger) == 10_000

    error = expect_revert(env.ledger, functions.setPlatformFee(10_001))
    assert (error.error_name, error.error_args) == ("PlatformFeeOutOfRange", {"feeBps": 10_001, "max": 10_000})
    assert functions.tariffVersion().call() == version + 1


@pytest.mark.parametrize("which", ["sync", "fetch"])
def test_a_rate_above_the_maximum_units_per_record_is_refused(env: LedgerEnv, which: str) -> None:
    functions = env.ledger.contract.functions
    maximum = constant(env, "MAX_UNITS_PER_RECORD")
    version = functions.tariffVersion().call()
    too_high = (maximum + 1, 1) if which == "sync" else (1, maximum + 1)
    error = expect_revert(env.ledger, functions.setRate(CATEGORY, *too_high, "too dear"))
    assert (error.error_name, error.error_args) == ("RateOutOfRange", {"unitsPerRecord": maximum + 1, "max": maximum})
    assert functions.tariffVersion().call() == version


def test_the_largest_rate_and_record_count_are_metered_exactly(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    max_rate = constant(env, "MAX_UNITS_PER_RECORD")
    max_records = constant(env, "MAX_RECORDS_PER_INTERACTION")
    env.ledger.set_rate(4242, max_rate, max_rate, "most expensive")
    env.record(env.signed(Kind.SYNC, clinic, category=4242, records=max_records))
    env.record(env.signed(Kind.SYNC, clinic, category=4242, records=max_records))
    assert balance(env, clinic) == 2 * max_records * max_rate
    assert env.ledger.total_supply() == 2 * max_records * max_rate
    env.record(env.signed(Kind.FETCH, clinic, category=4242, records=max_records))
    assert balance(env, clinic) == max_records * max_rate


def test_an_interaction_in_an_undefined_category_is_refused_and_its_nonce_stays_free(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    _, _, defined = env.ledger.call(env.ledger.contract.functions.rateOf(UNDEFINED_CATEGORY))
    assert not defined
    item = env.signed(Kind.SYNC, clinic, category=UNDEFINED_CATEGORY)
    error = batch_refusal(env, item)
    assert (error.error_name, error.error_args) == ("UnknownCategory", {"category": UNDEFINED_CATEGORY})
    assert not env.ledger.is_nonce_used(clinic.address, item.interaction.nonce)


# --------------------------------------------------------------------------- validation of one interaction


def test_record_counts_outside_one_to_the_maximum_are_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    maximum = constant(env, "MAX_RECORDS_PER_INTERACTION")
    for records in (0, maximum + 1):
        error = batch_refusal(env, env.signed(Kind.SYNC, clinic, records=records))
        assert (error.error_name, error.error_args) == ("RecordsOutOfRange", {"records": records, "max": maximum})
    env.record(env.signed(Kind.SYNC, clinic, records=maximum))
    assert balance(env, clinic) == maximum * rate_of(env.ledger, CATEGORY)[0]


def test_an_unknown_interaction_kind_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    item = env.signed(3, clinic)  # type: ignore[arg-type]  # deliberately outside the Kind enum
    error = batch_refusal(env, item)
    assert (error.error_name, error.error_args) == ("UnknownInteractionKind", {"kind": 3})


@pytest.mark.parametrize(
    ("kind", "counterparty_of"),
    [
        (Kind.SYNC, lambda env: env.institutions[1].address),
        (Kind.FETCH, lambda env: env.institutions[1].address),
        (Kind.EXCHANGE, lambda env: env.institutions[0].address),
        (Kind.EXCHANGE, lambda env: ZERO_ADDRESS),
    ],
    ids=["sync-with-counterparty", "fetch-with-counterparty", "exchange-with-self", "exchange-with-nobody"],
)
def test_invalid_counterparties_are_refused(
    env: LedgerEnv, kind: Kind, counterparty_of: Callable[[LedgerEnv], str]
) -> None:
    clinic = env.institutions[0]
    counterparty = counterparty_of(env)
    error = batch_refusal(env, env.signed(kind, clinic, counterparty=counterparty))
    assert error.error_name == "InvalidCounterparty"
    assert error.error_args == {"kind": kind.name.lower(), "institution": clinic.address, "counterparty": counterparty}


def test_an_interaction_past_its_deadline_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    deadline = env.w3.eth.get_block("latest")["timestamp"] - 1
    error = batch_refusal(env, env.signed(Kind.SYNC, clinic, deadline=deadline))
    assert error.error_name == "InteractionExpired"
    assert error.error_args["deadline"] == deadline
    assert error.error_args["blockTimestamp"] > deadline


def test_an_interaction_whose_deadline_is_the_block_timestamp_is_accepted(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    deadline = env.w3.eth.get_block("latest")["timestamp"] + 3
    # pin the next block's timestamp to the deadline (a few seconds ahead: harmless for other tests)
    env.w3.provider.make_request("evm_setNextBlockTimestamp", [deadline])  # type: ignore[arg-type]
    receipt = send_unchecked(env, env.ledger.record_batch_fn([env.signed(Kind.SYNC, clinic, deadline=deadline)]))
    assert env.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == deadline
    assert receipt["status"] == 1


def test_a_replayed_nonce_is_refused_and_reported_used(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    item = env.signed(Kind.SYNC, clinic, nonce=12_345)
    assert not env.ledger.is_nonce_used(clinic.address, 12_345)
    env.record(item)
    assert env.ledger.is_nonce_used(clinic.address, 12_345)

    for replay in (item, env.signed(Kind.FETCH, clinic, nonce=12_345, records=2)):
        error = batch_refusal(env, replay)
        assert (error.error_name, error.error_args) == (
            "NonceAlreadyUsed",
            {"institution": clinic.address, "nonce": 12_345},
        )
    # nonces are per institution
    other = env.institutions[1]
    assert not env.ledger.is_nonce_used(other.address, 12_345)
    env.record(env.signed(Kind.SYNC, other, nonce=12_345))


def test_nonces_are_unordered_and_independent_across_bitmap_words(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    # neighbours across the 256-bit word boundaries and the extremes of uint256
    nonces = [255, 256, 257, 2**255, 2**256 - 1, 0]
    for nonce in nonces:
        env.record(env.signed(Kind.SYNC, clinic, nonce=nonce, records=1))
        assert env.ledger.is_nonce_used(clinic.address, nonce)
    for unused in (1, 254, 258, 511, 512, 2**255 + 1, 2**256 - 2):
        assert not env.ledger.is_nonce_used(clinic.address, unused)


def test_record_interaction_applies_the_same_rules_as_a_batch(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    item = env.signed(Kind.SYNC, clinic, records=6)
    assert env.ledger.transactor is not None
    receipt = env.ledger.transactor.transact(env.ledger.contract.functions.recordInteraction(item.as_contract_arg()))
    assert balance(env, clinic) == 6 * rate_of(env.ledger, CATEGORY)[0]
    assert len(event_args(env.ledger, receipt, "InteractionRecorded")) == 1
    error = expect_revert(env.ledger, env.ledger.contract.functions.recordInteraction(item.as_contract_arg()))
    assert error.error_name == "NonceAlreadyUsed"


# --------------------------------------------------------------------------- batches


def test_an_empty_or_oversized_batch_is_refused(env: LedgerEnv) -> None:
    maximum = constant(env, "MAX_BATCH_SIZE")
    error = expect_revert(env.ledger, env.ledger.contract.functions.recordBatch([]))
    assert (error.error_name, error.error_args) == ("BatchSizeOutOfRange", {"size": 0, "max": maximum})
    # the size is checked before any item, so copies of one item are enough
    item = env.signed(Kind.SYNC, env.institutions[0])
    error = batch_refusal(env, *([item] * (maximum + 1)))
    assert (error.error_name, error.error_args) == ("BatchSizeOutOfRange", {"size": maximum + 1, "max": maximum})


def test_a_batch_of_the_maximum_size_is_recorded(env: LedgerEnv) -> None:
    maximum = constant(env, "MAX_BATCH_SIZE")
    clinics = env.institutions
    items = [env.signed(Kind.SYNC, clinics[i % len(clinics)], records=1) for i in range(maximum)]
    receipt = env.record(*items)
    assert len(event_args(env.ledger, receipt, "InteractionRecorded")) == maximum
    sync_rate, _ = rate_of(env.ledger, CATEGORY)
    assert sum(balance(env, c) for c in clinics) == maximum * sync_rate


BAD_ITEMS = {
    "InvalidSigner": lambda env, who: env.signed(Kind.SYNC, who, signer=Account.create()),
    "InteractionExpired": lambda env, who: env.signed(Kind.SYNC, who, deadline=1),
    "UnknownCategory": lambda env, who: env.signed(Kind.SYNC, who, category=UNDEFINED_CATEGORY),
    "CreditLineExceeded": lambda env, who: env.signed(Kind.FETCH, who, records=100_000),
    "RecordsOutOfRange": lambda env, who: env.signed(Kind.SYNC, who, records=0),
}


@pytest.mark.parametrize("error_name", sorted(BAD_ITEMS))
def test_a_batch_with_one_bad_item_reverts_entirely_with_that_items_error(env: LedgerEnv, error_name: str) -> None:
    a, b, c = env.institutions
    items = [
        env.signed(Kind.SYNC, a, records=3),
        env.signed(Kind.EXCHANGE, b, counterparty=a.address, records=2),
        BAD_ITEMS[error_name](env, c),
        env.signed(Kind.FETCH, c, records=1),
    ]
    assert batch_refusal(env, *items).error_name == error_name
    positions = positions_of(env.ledger, all_addresses(env))
    supply = env.ledger.total_supply()
    start_block = env.w3.eth.block_number

    # mine the batch anyway: the revert must undo the items before the bad one too
    receipt = send_unchecked(env, env.ledger.record_batch_fn(items))

    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert positions_of(env.ledger, all_addresses(env)) == positions
    assert env.ledger.total_supply() == supply
    for item in items:
        assert not env.ledger.is_nonce_used(item.interaction.institution, item.interaction.nonce)
    logs = env.ledger.contract.events.InteractionRecorded().get_logs(from_block=start_block + 1)
    assert list(logs) == []


# --------------------------------------------------------------------------- pause


def test_pause_blocks_recording_but_not_the_registry_tariff_or_settlement(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    functions = env.ledger.contract.functions
    receipt = env.ledger.pause()
    assert event_args(env.ledger, receipt, "Paused") == [{"account": env.admin.address}]
    assert functions.paused().call()

    item = env.signed(Kind.SYNC, clinic)
    assert batch_refusal(env, item).error_name == "EnforcedPause"
    assert expect_revert(env.ledger, functions.recordInteraction(item.as_contract_arg())).error_name == "EnforcedPause"
    assert expect_revert(env.ledger, functions.pause()).error_name == "EnforcedPause"

    newcomer = Account.create()
    register_with_consent(env.ledger, newcomer, "PAUSED-REG", "Registered while paused", 10)
    env.ledger.suspend(env.institutions[1].address)
    env.ledger.set_rate(CATEGORY, 4, 6, "laboratory")
    env.ledger.close_period()

    receipt = env.ledger.unpause()
    assert event_args(env.ledger, receipt, "Unpaused") == [{"account": env.admin.address}]
    assert expect_revert(env.ledger, functions.unpause()).error_name == "ExpectedPause"
    # the clinic signed at the old rate: it signs again at the new one
    assert batch_refusal(env, item).error_name == "UnitsMismatch"
    item = env.signed(Kind.SYNC, clinic)
    env.record(item)
    assert balance(env, clinic) == item.interaction.records * rate_of(env.ledger, CATEGORY)[0]


# --------------------------------------------------------------------------- periods and settlement


def test_close_period_emits_contiguous_ranges_ending_the_block_before_the_close(env: LedgerEnv) -> None:
    ledger = env.ledger
    first_period, first_start = ledger.current_period()
    assert first_start == ledger.deployment.block  # the first period starts where the ledger was deployed
    previous_to = first_start - 1
    for expected_period in range(first_period, first_period + 3):
        env.record(env.signed(Kind.SYNC, env.institutions[0]))  # some traffic inside the period
        receipt = ledger.close_period()
        [closed] = event_args(ledger, receipt, "PeriodClosed")
        assert closed == {
            "period": expected_period,
            "fromBlock": previous_to + 1,
            "toBlock": receipt["blockNumber"] - 1,
        }
        assert ledger.call(ledger.contract.functions.periodInstitutionCount(expected_period)) == len(env.institutions)
        assert ledger.period_range(expected_period) == (closed["fromBlock"], closed["toBlock"])
        assert ledger.current_period() == (expected_period + 1, receipt["blockNumber"])
        previous_to = closed["toBlock"]


def test_the_operator_can_close_periods_in_consecutive_blocks(env: LedgerEnv) -> None:
    # a period that started in the latest block gets the next block, in which the close is mined: the
    # client's pre-check must judge the close against that pending block, not refuse it
    first = env.ledger.close_period()
    second = env.ledger.close_period()
    assert second["blockNumber"] == first["blockNumber"] + 1
    [closed] = event_args(env.ledger, second, "PeriodClosed")
    assert (closed["fromBlock"], closed["toBlock"]) == (first["blockNumber"], first["blockNumber"])


def test_a_period_cannot_be_closed_in_the_block_it_started(env: LedgerEnv) -> None:
    receipt = env.ledger.close_period()
    period, start = env.ledger.current_period()
    assert start == receipt["blockNumber"]
    # evaluate a second close inside the very block of the first: the new period has no block yet
    error = expect_revert(env.ledger, env.ledger.contract.functions.closePeriod(), block=receipt["blockNumber"])
    assert (error.error_name, error.error_args) == ("PeriodHasNoBlocks", {"period": period, "startBlock": start})


def test_period_range_is_only_defined_for_closed_periods(env: LedgerEnv) -> None:
    current, _ = env.ledger.current_period()
    for period in (0, current, current + 1):
        error = expect_revert(env.ledger, env.ledger.contract.functions.periodRange(period))
        assert (error.error_name, error.error_args) == (
            "PeriodNotClosed",
            {"period": period, "currentPeriod": current},
        )


def test_anchor_settlement_only_for_closed_periods_once_and_with_a_root(env: LedgerEnv) -> None:
    functions = env.ledger.contract.functions
    root = bytes.fromhex("11" * 32)
    current, _ = env.ledger.current_period()
    for period in (0, current, current + 5):
        error = expect_revert(env.ledger, functions.anchorSettlement(period, root, 3))
        assert (error.error_name, error.error_args) == (
            "PeriodNotClosed",
            {"period": period, "currentPeriod": current},
        )

    env.ledger.close_period()
    error = expect_revert(env.ledger, functions.anchorSettlement(current, b"\0" * 32, 3))
    assert (error.error_name, error.error_args) == ("InvalidSettlementRoot", {"period": current})

    for wrong_count in (2, 4):
        error = expect_revert(env.ledger, functions.anchorSettlement(current, root, wrong_count))
        assert (error.error_name, error.error_args) == (
            "SettlementRowCountMismatch",
            {"period": current, "rowCount": wrong_count, "institutionCount": 3},
        )

    receipt = env.ledger.anchor_settlement(current, root, 3)
    [proposed] = event_args(env.ledger, receipt, "SettlementProposed")
    window = functions.SETTLEMENT_DISPUTE_WINDOW().call()
    block_time = env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert proposed == {"period": current, "version": 1, "root": root, "rowCount": 3, "finalAt": block_time + window}
    assert functions.settlementRoot(current).call() == root
    error = expect_revert(env.ledger, functions.anchorSettlement(current, bytes.fromhex("22" * 32), 3))
    assert (error.error_name, error.error_args) == (
        "SettlementAlreadyAnchored",
        {"period": current, "version": 1, "root": hex32(root)},
    )
    assert functions.settlementRoot(current).call() == root


# --------------------------------------------------------------------------- relay


def relay_input_with_one_bad_item(env: LedgerEnv, bad: SignedInteraction, bad_index: int) -> list[SignedInteraction]:
    a, b, c = env.institutions
    good = [
        env.signed(Kind.SYNC, a, records=20),
        env.signed(Kind.SYNC, b, records=3),
        env.signed(Kind.EXCHANGE, a, counterparty=b.address, records=4),
        env.signed(Kind.FETCH, c, records=2),
        env.signed(Kind.SYNC, c, records=7),
        env.signed(Kind.EXCHANGE, b, counterparty=c.address, records=1),
        env.signed(Kind.FETCH, a, records=1),
    ]
    return [*good[:bad_index], bad, *good[bad_index:]]


@pytest.mark.parametrize("error_name", ["InvalidSigner", "CreditLineExceeded", "UnknownCategory"])
@pytest.mark.parametrize("bad_index", [0, 4, 7])
def test_relay_records_every_good_item_and_reports_the_bad_one(env: LedgerEnv, error_name: str, bad_index: int) -> None:
    bad = BAD_ITEMS[error_name](env, env.institutions[1])
    items = relay_input_with_one_bad_item(env, bad, bad_index)
    start_block = env.w3.eth.block_number

    report = relay(env.ledger, items, batch_size=3)

    good_indices = [i for i in range(len(items)) if i != bad_index]
    assert sorted(report.recorded) == good_indices
    assert [(r.index, r.error_name) for r in report.rejected] == [(bad_index, error_name)]
    assert report.already_recorded == []
    logs = env.ledger.contract.events.InteractionRecorded().get_logs(from_block=start_block + 1)
    recorded_keys = sorted((log["args"]["institution"], log["args"]["nonce"]) for log in logs)
    expected_keys = sorted((items[i].interaction.institution, items[i].interaction.nonce) for i in good_indices)
    assert recorded_keys == expected_keys
    assert not env.ledger.is_nonce_used(bad.interaction.institution, bad.interaction.nonce)


def test_relay_rerun_records_nothing_new_and_reports_everything_already_recorded(env: LedgerEnv) -> None:
    a, b, c = env.institutions
    items = [
        env.signed(Kind.SYNC, a, records=10),
        env.signed(Kind.EXCHANGE, a, counterparty=b.address, records=2),
        env.signed(Kind.FETCH, c, records=1),
        env.signed(Kind.SYNC, b, records=4),
    ]
    first = relay(env.ledger, items, batch_size=2)
    assert sorted(first.recorded) == [0, 1, 2, 3]
    positions = positions_of(env.ledger, all_addresses(env))
    block = env.w3.eth.block_number

    second = relay(env.ledger, items, batch_size=2)

    assert second.recorded == []
    assert second.rejected == []
    assert second.transactions == []
    assert sorted(second.already_recorded) == [0, 1, 2, 3]
    assert env.w3.eth.block_number == block  # not a single transaction sent
    assert positions_of(env.ledger, all_addresses(env)) == positions


def test_relay_rerun_after_a_rejection_records_nothing_new_and_rejects_the_bad_item_again(env: LedgerEnv) -> None:
    bad = BAD_ITEMS["InvalidSigner"](env, env.institutions[2])
    items = relay_input_with_one_bad_item(env, bad, 2)
    relay(env.ledger, items, batch_size=4)
    positions = positions_of(env.ledger, all_addresses(env))

    second = relay(env.ledger, items, batch_size=4)

    assert second.recorded == []
    assert sorted(second.already_recorded) == [i for i in range(len(items)) if i != 2]
    assert [(r.index, r.error_name) for r in second.rejected] == [(2, "InvalidSigner")]
    assert positions_of(env.ledger, all_addresses(env)) == positions


def test_relay_refuses_to_send_when_the_bad_item_is_the_only_one(env: LedgerEnv) -> None:
    bad = env.signed(Kind.SYNC, env.institutions[0], signer=Account.create())
    block = env.w3.eth.block_number
    report = relay(env.ledger, [bad])
    assert report.recorded == []
    assert [(r.index, r.error_name) for r in report.rejected] == [(0, "InvalidSigner")]
    assert env.w3.eth.block_number == block


def test_a_revert_raised_while_sending_is_decoded(env: LedgerEnv) -> None:
    bad = env.signed(Kind.SYNC, env.institutions[0], records=0)
    with pytest.raises(LedgerRevertError) as raised:
        env.record(bad)
    assert raised.value.error_name == "RecordsOutOfRange"


def test_relay_gas_limit_covers_a_worst_case_batch(env: LedgerEnv) -> None:
    """The relay sends batches with a gas limit it calls a bound, not an estimate. A batch whose every item
    is as expensive as an item can be must still fit: exchanges between institutions never touched before,
    each opening a nonce word and reading a tariff category not yet read in the batch, with calldata of
    non-zero bytes."""
    size = constant(env, "MAX_BATCH_SIZE")
    accounts = [Account.create() for _ in range(2 * size)]
    functions = env.ledger.contract.functions
    transactor = env.ledger.transactor
    assert transactor is not None
    # set-up transactions are pipelined (fixed gas, one wait) to keep this test quick
    sent = [
        transactor.send(registration_fn(env, a, f"W-{i}", "w", 10**12), gas=400_000) for i, a in enumerate(accounts)
    ]
    sent += [transactor.send(functions.setRate(5_000 + i, 1, 1, "worst case"), gas=200_000) for i in range(size)]
    transactor.wait(sent[-1])
    items = [
        env.signed(
            Kind.EXCHANGE,
            accounts[2 * i],
            counterparty=accounts[2 * i + 1].address,
            category=5_000 + i,
            records=999_999,
            nonce=2**256 - 1 - 256 * i,
            data_hash="0x" + "ff" * 32,
        )
        for i in range(size)
    ]
    call = {"from": transactor.address, "to": env.ledger.address, "data": env.ledger.record_batch_calldata(items)}
    needed = env.w3.eth.estimate_gas(call)  # type: ignore[arg-type]
    assert needed <= TRANSACTION_GAS_CAP, f"a worst-case batch of MAX_BATCH_SIZE={size} needs {needed} gas"
    assert needed <= batch_gas_limit(size), (
        f"a worst-case batch of {size} needs {needed} gas ({needed // size} an item); the relay gives it "
        f"{batch_gas_limit(size)}"
    )

    report = relay(env.ledger, items, batch_size=size)

    assert sorted(report.recorded) == list(range(size))
