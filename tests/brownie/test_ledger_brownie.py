"""The brownie workflow: the same contract, compiled by brownie through solcjs, driven by
brownie's accounts; signatures made by medmeter's signing module."""

import brownie
from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, Kind, sign_interaction

LAB = 2


def _signed(ledger, clinic, kind, records, nonce):
    interaction = Interaction(kind, clinic.address, ZERO_ADDRESS, LAB, records, "0x" + "11" * 32, nonce, 2**40)
    return sign_interaction(interaction, Domain(brownie.chain.id, ledger.address), clinic).as_contract_arg()


def test_sync_then_fetch_settles_on_chain(ledger, admin, clinic):
    ledger.registerInstitution(clinic.address, b"BROWNIE-1".ljust(32, b"\0"), "Brownie Clinic", 100, {"from": admin})
    ledger.setRate(LAB, 3, 5, "laboratory", {"from": admin})
    tx = ledger.recordBatch([_signed(ledger, clinic, Kind.SYNC, 10, 0)], {"from": admin})
    assert tx.events["InteractionRecorded"]["units"] == 30
    assert ledger.balanceOf(clinic.address) == 30
    ledger.recordBatch([_signed(ledger, clinic, Kind.FETCH, 8, 1)], {"from": admin})
    assert ledger.balanceOf(clinic.address) == 0
    assert ledger.debtOf(clinic.address) == 10
    assert ledger.totalSupply() == 0


def test_replayed_nonce_reverts(ledger, admin, clinic):
    ledger.registerInstitution(clinic.address, b"BROWNIE-2".ljust(32, b"\0"), "Brownie Clinic", 0, {"from": admin})
    ledger.setRate(LAB, 1, 1, "laboratory", {"from": admin})
    item = _signed(ledger, clinic, Kind.SYNC, 1, 7)
    ledger.recordBatch([item], {"from": admin})
    with brownie.reverts():
        ledger.recordBatch([item], {"from": admin})
    assert ledger.balanceOf(clinic.address) == 1


def test_non_relayer_cannot_record(ledger, admin, accounts, clinic):
    ledger.registerInstitution(clinic.address, b"BROWNIE-3".ljust(32, b"\0"), "Brownie Clinic", 0, {"from": admin})
    ledger.setRate(LAB, 1, 1, "laboratory", {"from": admin})
    with brownie.reverts():
        ledger.recordBatch([_signed(ledger, clinic, Kind.SYNC, 1, 0)], {"from": accounts[1]})
