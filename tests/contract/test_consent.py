"""The operator cannot act, price, redirect or settle for an institution (issue 9), and the counters of issue 10.

The first three tests are the attacks of issue 9's "Why", made by an operator holding every platform role
but no institution key; each succeeded on the ledger before this change (registrar `rotateSigner`,
`setRate` repricing a signed interaction, a first anchored root that nothing could replace).
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from medmeter.signing import consent
from medmeter.signing.interaction import ZERO_ADDRESS, Kind, digest
from medmeter.statement.merkle import MerkleTree
from medmeter.toolchain.compiler import Artifact
from tests.support.chains import (
    FAR_FUTURE,
    LedgerEnv,
    advance_time,
    batch_refusal,
    event_args,
    expect_revert,
    fee_bps_of,
    funded_account,
    rate_of,
    register_with_consent,
    rotate_with_consent,
)

CATEGORY = 2


def functions(env: LedgerEnv) -> Any:
    return env.ledger.contract.functions


def transact_as(env: LedgerEnv, account: LocalAccount, fn: Any) -> Any:
    ledger = env.as_account(account)
    assert ledger.transactor is not None
    return ledger.transactor.transact(fn)


def registry_nonce(env: LedgerEnv, institution: str) -> int:
    return int(functions(env).registryNonce(institution).call())


def positions(env: LedgerEnv) -> list[tuple[int, int]]:
    return [(p.balance, p.debt) for p in (env.ledger.position(a.address) for a in env.institutions)]


# --------------------------------------------------------------------------- the attacks of issue 9


def test_the_operator_cannot_rotate_a_clinics_key_to_its_own_and_sign_for_the_clinic(env: LedgerEnv) -> None:
    clinic, other = env.institutions[0], env.institutions[1]
    env.record(env.signed(Kind.SYNC, clinic, records=40))  # a balance worth stealing
    before = positions(env)
    operator_key = Account.create()
    f = functions(env)

    # 1. immediate rotation needs the clinic's signature, and the new key's: the operator forges the first
    nonce = registry_nonce(env, clinic.address)
    forged = consent.signer_rotation(
        clinic.address, operator_key.address, nonce, FAR_FUTURE, env.ledger.domain, env.admin
    )
    accepted = consent.signer_acceptance(
        clinic.address, operator_key.address, nonce, FAR_FUTURE, env.ledger.domain, operator_key
    )
    error = expect_revert(
        env.ledger, f.rotateSigner(clinic.address, operator_key.address, nonce, FAR_FUTURE, forged, accepted)
    )
    assert error.error_name == "InvalidMessageSigner"
    assert error.error_args == {
        "institution": clinic.address,
        "recovered": env.admin.address,
        "expected": clinic.address,
    }

    # 2. the registrar's recovery is visible and does not take effect during its delay
    receipt = env.ledger.transactor.transact(f.startRecovery(clinic.address, operator_key.address))  # type: ignore[union-attr]
    [started] = event_args(env.ledger, receipt, "RecoveryStarted")
    delay = f.RECOVERY_DELAY().call()
    assert delay == 48 * 3600
    assert started["newSigner"] == operator_key.address
    assert f.pendingRecovery(clinic.address).call() == [operator_key.address, started["readyAt"]]
    theft = env.signed(Kind.EXCHANGE, clinic, signer=operator_key, counterparty=other.address, records=40)
    assert batch_refusal(env, theft).error_name == "InvalidSigner"
    error = expect_revert(env.ledger, f.completeRecovery(clinic.address))
    assert error.error_name == "RecoveryNotReady"

    # 3. the clinic sees it and cancels with its own key; the recovery can then never complete
    receipt = transact_as(env, clinic, f.cancelRecovery(clinic.address))
    assert event_args(env.ledger, receipt, "RecoveryCancelled") == [
        {"institution": clinic.address, "newSigner": operator_key.address, "by": clinic.address}
    ]
    advance_time(env.w3, delay + 1)
    assert expect_revert(env.ledger, f.completeRecovery(clinic.address)).error_name == "NoRecoveryPending"
    assert batch_refusal(env, theft).error_name == "InvalidSigner"
    assert env.ledger.institution(clinic.address).signer == clinic.address
    assert positions(env) == before

    # 4. the old unilateral call is gone from the ABI
    assert next(e for e in env.artifact.abi if e.get("name") == "rotateSigner")["inputs"][2]["name"] == "nonce"


def test_a_tariff_change_around_a_relay_refuses_the_signed_interaction_instead_of_repricing_it(
    env: LedgerEnv,
) -> None:
    clinic = env.institutions[0]
    env.record(env.signed(Kind.SYNC, clinic, records=100))
    sync_rate, fetch_rate = rate_of(env.ledger, CATEGORY)
    fetch = env.signed(Kind.FETCH, clinic, records=10)
    sync = env.signed(Kind.SYNC, clinic, records=10)
    assert (fetch.interaction.units, sync.interaction.units) == (10 * fetch_rate, 10 * sync_rate)
    before = positions(env)

    env.ledger.set_rate(CATEGORY, 0, fetch_rate * 100, "laboratory")  # the operator moves the tariff

    error = batch_refusal(env, fetch)
    assert (error.error_name, error.error_args) == (
        "UnitsMismatch",
        {
            "institution": clinic.address,
            "nonce": fetch.interaction.nonce,
            "signedUnits": 10 * fetch_rate,
            "computedUnits": 1_000 * fetch_rate,
        },
    )
    error = batch_refusal(env, sync)
    assert (error.error_args["signedUnits"], error.error_args["computedUnits"]) == (10 * sync_rate, 0)
    assert positions(env) == before

    env.ledger.set_rate(CATEGORY, sync_rate, fetch_rate, "laboratory")  # back at the price signed: accepted
    env.record(fetch, sync)
    assert env.ledger.position(clinic.address).balance == before[0][0] - 10 * fetch_rate + 10 * sync_rate


def test_a_wrong_root_is_replaced_in_the_open_before_it_is_final_and_never_after(env: LedgerEnv) -> None:
    f = functions(env)
    env.record(env.signed(Kind.SYNC, env.institutions[0]))
    env.ledger.close_period()
    wrong, right = keccak(text="wrong root"), keccak(text="right root")
    reason = keccak(text="row of TEST-000 omitted a sync")
    env.ledger.anchor_settlement(1, wrong, 3)
    assert f.settlementStatus(1).call() == [1, wrong, False]

    error = expect_revert(env.ledger, f.supersedeSettlement(1, right, 3, b"\0" * 32))
    assert error.error_name == "SupersedeReasonMissing"
    receipt = env.ledger.transactor.transact(f.supersedeSettlement(1, right, 3, reason))  # type: ignore[union-attr]
    [superseded] = event_args(env.ledger, receipt, "SettlementSuperseded")
    assert (superseded["version"], superseded["previousRoot"], superseded["root"], superseded["reasonHash"]) == (
        2,
        wrong,
        right,
        reason,
    )
    first, second = f.settlementVersion(1, 1).call(), f.settlementVersion(1, 2).call()
    assert (first[0], first[1], second[0], second[1]) == (wrong, b"\0" * 32, right, reason)
    assert expect_revert(env.ledger, f.settlementVersion(1, 3)).error_name == "UnknownSettlementVersion"

    advance_time(env.w3, f.SETTLEMENT_DISPUTE_WINDOW().call() + 1)
    assert f.settlementStatus(1).call() == [2, right, True]
    error = expect_revert(env.ledger, f.supersedeSettlement(1, wrong, 3, reason))
    assert error.error_name == "SettlementAlreadyFinal"
    assert error.error_args["version"] == 2


# --------------------------------------------------------------------------- registration needs consent


def test_registration_needs_the_registered_keys_own_signature(env: LedgerEnv) -> None:
    newcomer = Account.create()
    f = functions(env)
    code = b"CONSENT-1".ljust(32, b"\0")
    for signer in (env.admin, Account.create()):
        forged = consent.registration(newcomer.address, "CONSENT-1", "Clinic", FAR_FUTURE, env.ledger.domain, signer)
        error = expect_revert(
            env.ledger, f.registerInstitution(newcomer.address, code, "Clinic", 5, FAR_FUTURE, forged)
        )
        assert error.error_args == {"institution": newcomer.address, "recovered": signer.address}
    # the consent covers the name: the operator cannot register the key under another name
    own = consent.registration(newcomer.address, "CONSENT-1", "Clinic", FAR_FUTURE, env.ledger.domain, newcomer)
    error = expect_revert(env.ledger, f.registerInstitution(newcomer.address, code, "Other", 5, FAR_FUTURE, own))
    assert error.error_name == "InvalidRegistrationSigner"
    past = env.w3.eth.get_block("latest")["timestamp"] - 1
    stale = consent.registration(newcomer.address, "CONSENT-1", "Clinic", past, env.ledger.domain, newcomer)
    error = expect_revert(env.ledger, f.registerInstitution(newcomer.address, code, "Clinic", 5, past, stale))
    assert error.error_name == "SignatureExpired"

    register_with_consent(env.ledger, newcomer, "CONSENT-1", "Clinic", 5)
    assert env.ledger.institution(newcomer.address).status == "active"
    assert list(f.countersOf(newcomer.address).call()) == [0] * 9


# --------------------------------------------------------------------------- self-rotation and recovery


def test_self_rotation_needs_both_keys_and_a_fresh_registry_nonce(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    new_key, stranger = Account.create(), Account.create()
    f = functions(env)
    domain = env.ledger.domain
    by_current = consent.signer_rotation(clinic.address, new_key.address, 0, FAR_FUTURE, domain, clinic)
    by_stranger = consent.signer_acceptance(clinic.address, new_key.address, 0, FAR_FUTURE, domain, stranger)
    error = expect_revert(
        env.ledger, f.rotateSigner(clinic.address, new_key.address, 0, FAR_FUTURE, by_current, by_stranger)
    )
    assert error.error_args == {"newSigner": new_key.address, "recovered": stranger.address}

    receipt = rotate_with_consent(env, clinic.address, clinic, new_key)
    assert event_args(env.ledger, receipt, "SignerRotated")[0]["newSigner"] == new_key.address
    assert registry_nonce(env, clinic.address) == 1
    by_new = consent.signer_acceptance(clinic.address, new_key.address, 0, FAR_FUTURE, domain, new_key)
    replay = f.rotateSigner(clinic.address, new_key.address, 0, FAR_FUTURE, by_current, by_new)
    assert expect_revert(env.ledger, replay).error_name == "SignerAlreadyInUse"
    # a rotation signed with a used registry nonce is refused, even by the current signer
    third = Account.create()
    stale = consent.signer_rotation(clinic.address, third.address, 0, FAR_FUTURE, domain, new_key)
    stale_acceptance = consent.signer_acceptance(clinic.address, third.address, 0, FAR_FUTURE, domain, third)
    error = expect_revert(
        env.ledger, f.rotateSigner(clinic.address, third.address, 0, FAR_FUTURE, stale, stale_acceptance)
    )
    assert error.error_args == {"institution": clinic.address, "given": 0, "expected": 1}


def test_a_self_rotation_cancels_a_pending_recovery(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    recovery_key, new_key = Account.create(), Account.create()
    env.ledger.transactor.transact(f.startRecovery(clinic.address, recovery_key.address))  # type: ignore[union-attr]
    receipt = rotate_with_consent(env, clinic.address, clinic, new_key)
    assert [e["newSigner"] for e in event_args(env.ledger, receipt, "RecoveryCancelled")] == [recovery_key.address]
    assert f.pendingRecovery(clinic.address).call() == [ZERO_ADDRESS, 0]


def test_a_recovery_completes_after_its_delay_by_anyone_and_the_new_key_signs(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    new_key = Account.create()
    env.record(env.signed(Kind.SYNC, clinic, records=3))
    before = env.ledger.position(clinic.address)
    env.ledger.transactor.transact(f.startRecovery(clinic.address, new_key.address))  # type: ignore[union-attr]
    error = expect_revert(env.ledger, f.startRecovery(clinic.address, Account.create().address))
    assert error.error_name == "RecoveryAlreadyPending"
    advance_time(env.w3, f.RECOVERY_DELAY().call() + 1)

    receipt = transact_as(env, Account.create(), f.completeRecovery(clinic.address))

    assert event_args(env.ledger, receipt, "RecoveryCompleted") == [
        {"institution": clinic.address, "previousSigner": clinic.address, "newSigner": new_key.address}
    ]
    assert f.pendingRecovery(clinic.address).call() == [ZERO_ADDRESS, 0]
    assert env.ledger.position(clinic.address) == before
    assert batch_refusal(env, env.signed(Kind.SYNC, clinic)).error_name == "InvalidSigner"
    env.record(env.signed(Kind.SYNC, clinic, signer=new_key))


def test_a_recovery_is_cancelled_by_a_signed_message_any_account_submits(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    recovery_key = Account.create()
    env.ledger.transactor.transact(f.startRecovery(clinic.address, recovery_key.address))  # type: ignore[union-attr]
    nonce = registry_nonce(env, clinic.address)
    signature = consent.recovery_cancellation(
        clinic.address, recovery_key.address, nonce, FAR_FUTURE, env.ledger.domain, clinic
    )
    submitter = Account.create()
    receipt = transact_as(env, submitter, f.cancelRecoveryBySig(clinic.address, nonce, FAR_FUTURE, signature))
    assert event_args(env.ledger, receipt, "RecoveryCancelled") == [
        {"institution": clinic.address, "newSigner": recovery_key.address, "by": submitter.address}
    ]
    error = expect_revert(env.ledger, f.cancelRecoveryBySig(clinic.address, nonce, FAR_FUTURE, signature))
    assert error.error_name == "InvalidRegistryNonce"  # a cancellation is used once


def test_a_direct_cancellation_from_anyone_but_the_signer_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    env.ledger.transactor.transact(f.startRecovery(clinic.address, Account.create().address))  # type: ignore[union-attr]
    error = expect_revert(env.ledger, f.cancelRecovery(clinic.address))  # the operator, holding every role
    assert error.error_args == {"institution": clinic.address, "caller": env.admin.address, "signer": clinic.address}


# --------------------------------------------------------------------------- nonce cancellation


def test_an_institution_cancels_one_nonce_a_range_or_a_word_and_they_cannot_be_relayed(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    one = env.signed(Kind.SYNC, clinic, nonce=5)
    in_range = [env.signed(Kind.SYNC, clinic, nonce=n) for n in (10, 11, 12)]
    in_word = env.signed(Kind.SYNC, clinic, nonce=256 * 3 + 7)
    kept = env.signed(Kind.SYNC, clinic, nonce=13)

    receipt = transact_as(env, clinic, f.cancelNonces(clinic.address, 0, 1 << 5))
    assert event_args(env.ledger, receipt, "NoncesCancelled") == [
        {"institution": clinic.address, "wordIndex": 0, "mask": 32, "newlyCancelled": 32}
    ]
    [(word, mask)] = consent.nonce_masks([10, 11, 12]).items()
    signature = consent.nonce_cancellation(clinic.address, word, mask, FAR_FUTURE, env.ledger.domain, clinic)
    env.ledger.transactor.transact(f.cancelNoncesBySig(clinic.address, word, mask, FAR_FUTURE, signature))  # type: ignore[union-attr]
    everything = 2**256 - 1
    signature = consent.nonce_cancellation(clinic.address, 3, everything, FAR_FUTURE, env.ledger.domain, clinic)
    env.ledger.transactor.transact(f.cancelNoncesBySig(clinic.address, 3, everything, FAR_FUTURE, signature))  # type: ignore[union-attr]

    for item in (one, *in_range, in_word):
        error = batch_refusal(env, item)
        assert (error.error_name, error.error_args["nonce"]) == ("NonceAlreadyUsed", item.interaction.nonce)
    env.record(kept)  # a nonce not cancelled is unaffected
    assert expect_revert(env.ledger, f.cancelNonces(clinic.address, 0, 0), sender=clinic.address).error_name == (
        "EmptyNonceMask"
    )


def test_the_operator_cannot_cancel_an_institutions_nonces(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    forged = consent.nonce_cancellation(clinic.address, 0, 1, FAR_FUTURE, env.ledger.domain, env.admin)
    error = expect_revert(env.ledger, f.cancelNoncesBySig(clinic.address, 0, 1, FAR_FUTURE, forged))
    assert error.error_name == "InvalidMessageSigner"
    assert expect_revert(env.ledger, f.cancelNonces(clinic.address, 0, 1)).error_name == "NotInstitutionSigner"
    env.record(env.signed(Kind.SYNC, clinic, nonce=0))


# --------------------------------------------------------------------------- cumulative counters


def test_counters_are_the_sums_of_the_recorded_events_and_a_period_is_their_difference(env: LedgerEnv) -> None:
    a, b, c = env.institutions
    f = functions(env)
    env.ledger.set_platform_fee(1_000)
    env.record(env.signed(Kind.SYNC, a, records=30), env.signed(Kind.SYNC, b, records=2))
    start_block = env.w3.eth.block_number
    snapshot = {x.address: list(f.countersOf(x.address).call()) for x in env.institutions}
    items = [
        env.signed(Kind.SYNC, a, records=4),
        env.signed(Kind.FETCH, b, records=3),
        env.signed(Kind.EXCHANGE, a, counterparty=c.address, records=5),
        env.signed(Kind.EXCHANGE, b, counterparty=a.address, records=2),
        env.signed(Kind.FETCH, a, records=1, category=3),
    ]
    receipt = env.record(*items)
    expected = {x.address: [0] * 9 for x in env.institutions}
    # fields: syncCount, syncUnits, fetchCount, fetchUnits, exInCount, exInUnits, exOutCount, exOutUnits, fee
    for event in event_args(env.ledger, receipt, "InteractionRecorded"):
        who, units, fee = event["institution"], event["units"], event["fee"]
        if event["kind"] == 0:
            expected[who][0] += 1
            expected[who][1] += units
        elif event["kind"] == 1:
            expected[who][2] += 1
            expected[who][3] += units
        else:
            expected[who][6] += 1
            expected[who][7] += units
            provider = expected[event["counterparty"]]
            provider[4] += 1
            provider[5] += units - fee
            provider[8] += fee
    assert sum(e[8] for e in expected.values()) > 0  # the fee is exercised
    for x in env.institutions:
        now = list(f.countersOf(x.address).call())
        then = list(f.countersOf(x.address).call(block_identifier=start_block))
        assert then == snapshot[x.address]
        assert [n - t for n, t in zip(now, then, strict=True)] == expected[x.address], x.address
    assert fee_bps_of(env.ledger) == 1_000


# --------------------------------------------------------------------------- scheduled tariff


def test_a_scheduled_rate_and_fee_apply_when_the_period_closes_and_not_before(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    sync_rate, fetch_rate = rate_of(env.ledger, CATEGORY)
    fee = fee_bps_of(env.ledger)
    transactor = env.ledger.transactor
    assert transactor is not None
    receipt = transactor.transact(f.scheduleRate(CATEGORY, sync_rate + 1, fetch_rate + 1, "laboratory"))
    assert event_args(env.ledger, receipt, "TariffRateScheduled")[0]["period"] == 2
    receipt = transactor.transact(f.schedulePlatformFee(fee + 7))
    assert event_args(env.ledger, receipt, "PlatformFeeScheduled") == [{"period": 2, "feeBps": fee + 7}]
    assert f.scheduledRateOf(CATEGORY).call() == [sync_rate + 1, fetch_rate + 1, True]
    assert rate_of(env.ledger, CATEGORY) == (sync_rate, fetch_rate)  # visible, not yet in force
    env.record(env.signed(Kind.SYNC, clinic, records=2))

    receipt = env.ledger.close_period()

    [rate_set] = event_args(env.ledger, receipt, "TariffRateSet")
    assert (rate_set["category"], rate_set["syncUnitsPerRecord"], rate_set["label"]) == (
        CATEGORY,
        sync_rate + 1,
        "laboratory",
    )
    assert event_args(env.ledger, receipt, "PlatformFeeSet")[0]["feeBps"] == fee + 7
    assert rate_of(env.ledger, CATEGORY) == (sync_rate + 1, fetch_rate + 1)
    assert fee_bps_of(env.ledger) == fee + 7
    assert f.scheduledCategories().call() == []
    assert f.scheduledPlatformFee().call() == [0, False]


# --------------------------------------------------------------------------- disputes and reversals


def test_an_institution_disputes_an_interaction_directly_or_by_a_signed_message(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    item = env.signed(Kind.FETCH, clinic, records=2)
    env.record(item)
    subject = digest(item.interaction, env.ledger.domain)
    reason = keccak(text="we never fetched these records")
    receipt = transact_as(env, clinic, f.fileDispute(clinic.address, 1, subject, reason))
    assert event_args(env.ledger, receipt, "DisputeFiled") == [
        {"institution": clinic.address, "period": 1, "interactionDigest": subject, "reasonHash": reason}
    ]
    message = {
        "institution": clinic.address,
        "period": 1,
        "interactionDigest": b"\0" * 32,
        "reasonHash": reason,
        "deadline": FAR_FUTURE,
    }
    signature = consent.sign_message("Dispute", message, env.ledger.domain, clinic)
    fn = f.fileDisputeBySig(clinic.address, 1, b"\0" * 32, reason, FAR_FUTURE, signature)
    receipt = transact_as(env, Account.create(), fn)
    assert event_args(env.ledger, receipt, "DisputeFiled")[0]["interactionDigest"] == b"\0" * 32  # the statement
    assert expect_revert(env.ledger, fn).error_name == "MessageAlreadyUsed"
    assert (
        expect_revert(env.ledger, f.fileDispute(clinic.address, 9, subject, reason), sender=clinic.address).error_name
        == "PeriodNotStarted"
    )


def test_a_reversal_signed_by_the_institution_is_its_own_event_and_the_original_stays(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    f = functions(env)
    item = env.signed(Kind.FETCH, clinic, records=2)
    env.record(item)
    original = digest(item.interaction, env.ledger.domain)
    before = (env.ledger.position(clinic.address), f.countersOf(clinic.address).call())
    reason = keccak(text="duplicate fetch")
    message = {
        "institution": clinic.address,
        "originalDigest": original,
        "units": item.interaction.units,
        "reasonHash": reason,
        "deadline": FAR_FUTURE,
    }
    forged = consent.sign_message("Reversal", message, env.ledger.domain, env.admin)
    fn = f.recordReversal(clinic.address, original, item.interaction.units, reason, FAR_FUTURE, forged)
    assert expect_revert(env.ledger, fn).error_name == "InvalidMessageSigner"

    signature = consent.sign_message("Reversal", message, env.ledger.domain, clinic)
    fn = f.recordReversal(clinic.address, original, item.interaction.units, reason, FAR_FUTURE, signature)
    receipt = env.ledger.transactor.transact(fn)  # type: ignore[union-attr]

    assert event_args(env.ledger, receipt, "ReversalRecorded") == [
        {
            "institution": clinic.address,
            "originalDigest": original,
            "units": item.interaction.units,
            "reasonHash": reason,
            "period": 1,
        }
    ]
    assert event_args(env.ledger, receipt, "InteractionRecorded") == []
    assert (env.ledger.position(clinic.address), f.countersOf(clinic.address).call()) == before
    assert expect_revert(env.ledger, fn).error_name == "AlreadyReversed"


# --------------------------------------------------------------------------- deployment


def test_the_extension_refuses_direct_calls(env: LedgerEnv) -> None:
    extension = env.w3.eth.contract(address=functions(env).EXTENSION().call(), abi=env.artifact.abi)
    clinic = env.institutions[0]
    error = expect_revert(env.ledger, extension.functions.cancelNonces(clinic.address, 0, 1), sender=clinic.address)
    assert error.error_name == "ExtensionCalledDirectly"


@pytest.mark.parametrize("which", ["recovery", "dispute"])
def test_a_delay_out_of_range_is_refused_at_deploy(deployed_env: LedgerEnv, artifact: Artifact, which: str) -> None:
    from web3.exceptions import ContractCustomError

    w3 = deployed_env.w3
    deployer = funded_account(w3)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    args = (deployer.address, 60, 0, 60) if which == "recovery" else (deployer.address, 60, 60, 0)
    with pytest.raises(ContractCustomError) as raised:
        factory.constructor(*args).estimate_gas({"from": deployer.address})
    error = deployed_env.ledger.errors.from_exception(raised.value)
    assert error.error_name == "DelayOutOfRange"
    assert error.error_args["name"] == ("recoveryDelay" if which == "recovery" else "disputeWindow")


def test_a_final_root_verifies_a_row_and_a_superseded_version_is_still_checkable(env: LedgerEnv) -> None:
    """verifySettlementRow checks the final root only; verifySettlementRowAt any version, final or not."""
    from medmeter.statement.statements import SettlementLeaf

    f = functions(env)
    env.record(env.signed(Kind.SYNC, env.institutions[0], records=3))
    env.ledger.close_period()
    leaves = [SettlementLeaf(1, a.address, i, 0, i, 0, i, 0, 0, 0) for i, a in enumerate(env.institutions)]
    tree = MerkleTree([leaf.hash() for leaf in leaves])
    env.ledger.anchor_settlement(1, tree.root, 3)
    row, proof = leaves[1].as_contract_arg(), tree.proof(leaves[1].hash())
    assert not f.verifySettlementRow(row, proof).call()  # proposed, not final
    assert f.verifySettlementRowAt(row, 1, proof).call()
    assert not f.verifySettlementRowAt(row, 2, proof).call()  # no such version
    advance_time(env.w3, f.SETTLEMENT_DISPUTE_WINDOW().call() + 1)
    assert f.verifySettlementRow(row, proof).call()
    forged = SettlementLeaf(1, env.institutions[1].address, 999, 0, 1, 0, 1, 0, 0, 0)
    assert not f.verifySettlementRow(forged.as_contract_arg(), proof).call()
