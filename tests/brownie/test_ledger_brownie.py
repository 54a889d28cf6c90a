"""The brownie workflow: the same contract, compiled by brownie through solcjs, driven by
brownie's accounts; signatures made by medmeter's signing module."""

import brownie
from medmeter.signing.consent import registration
from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, Kind, sign_interaction

LAB = 2
FAR_FUTURE = 2**40


def _domain(ledger):
    return Domain(brownie.chain.id, ledger.address)


def _register(ledger, admin, clinic, code, credit_line):
    """With the clinic's own consent, as the ledger requires."""
    consent = registration(clinic.address, code, "Brownie Clinic", FAR_FUTURE, _domain(ledger), clinic)
    ledger.registerInstitution(
        clinic.address, code.encode().ljust(32, b"\0"), "Brownie Clinic", credit_line, FAR_FUTURE, consent,
        {"from": admin},
    )  # fmt: skip


def _signed(ledger, clinic, kind, records, nonce, rate):
    interaction = Interaction(
        kind, clinic.address, ZERO_ADDRESS, LAB, records, records * rate, "0x" + "11" * 32, nonce, FAR_FUTURE
    )
    return sign_interaction(interaction, _domain(ledger), clinic).as_contract_arg()


def test_sync_then_fetch_settles_on_chain(ledger, admin, clinic):
    _register(ledger, admin, clinic, "BROWNIE-1", 100)
    ledger.setRate(LAB, 3, 5, "laboratory", {"from": admin})
    tx = ledger.recordBatch([_signed(ledger, clinic, Kind.SYNC, 10, 0, 3)], {"from": admin})
    assert tx.events["InteractionRecorded"]["units"] == 30
    assert ledger.balanceOf(clinic.address) == 30
    ledger.recordBatch([_signed(ledger, clinic, Kind.FETCH, 8, 1, 5)], {"from": admin})
    assert ledger.balanceOf(clinic.address) == 0
    assert ledger.debtOf(clinic.address) == 10
    assert ledger.totalSupply() == 0


def test_replayed_nonce_reverts(ledger, admin, clinic):
    _register(ledger, admin, clinic, "BROWNIE-2", 0)
    ledger.setRate(LAB, 1, 1, "laboratory", {"from": admin})
    item = _signed(ledger, clinic, Kind.SYNC, 1, 7, 1)
    ledger.recordBatch([item], {"from": admin})
    with brownie.reverts():
        ledger.recordBatch([item], {"from": admin})
    assert ledger.balanceOf(clinic.address) == 1


def test_non_relayer_cannot_record(ledger, admin, accounts, clinic):
    _register(ledger, admin, clinic, "BROWNIE-3", 0)
    ledger.setRate(LAB, 1, 1, "laboratory", {"from": admin})
    with brownie.reverts():
        ledger.recordBatch([_signed(ledger, clinic, Kind.SYNC, 1, 0, 1)], {"from": accounts[1]})
