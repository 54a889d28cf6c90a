"""An item whose nonce the chain already used: the recorded event decides what the relay reports.

The same interaction is "already recorded" (where, not a refusal), paused ledger or not; another
interaction under the nonce is a `NonceConflict` naming the recorded transaction; a cancelled nonce
is refused as cancelled. None of them is ever recorded twice or silently dropped."""

from __future__ import annotations

from medmeter.relay.engine import relay
from medmeter.signing import consent
from medmeter.signing.interaction import Kind
from tests.support.chains import LedgerEnv


def test_the_same_interaction_is_already_recorded_and_another_under_its_nonce_is_a_conflict(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    original = env.signed(Kind.SYNC, clinic, records=4, data_hash="0x" + "11" * 32)
    receipt = env.record(original)
    other = env.signed(Kind.SYNC, clinic, records=9, nonce=original.interaction.nonce, data_hash="0x" + "22" * 32)

    for paused in (False, True):
        if paused:
            env.ledger.pause()
        report = relay(env.ledger, [original])
        assert report.recorded == report.rejected == []
        assert report.already_recorded == [0], paused
        where = report.where[0]
        assert (where.tx_hash.removeprefix("0x"), where.block_number, where.how) == (
            receipt["transactionHash"].hex().removeprefix("0x"),
            receipt["blockNumber"],
            "already",
        )
        report = relay(env.ledger, [other])
        assert report.recorded == report.already_recorded == []
        [conflict] = report.rejected
        assert conflict.error_name == "NonceConflict", paused
        assert "records 9 vs 4" in conflict.reason
        assert receipt["transactionHash"].hex().removeprefix("0x") in conflict.reason
    env.ledger.unpause()


def test_a_cancelled_nonce_is_refused_as_cancelled_not_reported_recorded(env: LedgerEnv) -> None:
    clinic = env.institutions[1]
    item = env.signed(Kind.SYNC, clinic)
    [(word, mask)] = consent.nonce_masks([item.interaction.nonce]).items()
    env.as_account(clinic).transactor.transact(  # type: ignore[union-attr]
        env.ledger.contract.functions.cancelNonces(clinic.address, word, mask)
    )
    report = relay(env.ledger, [item])
    assert report.recorded == report.already_recorded == []
    [refused] = report.rejected
    assert refused.error_name == "NonceAlreadyUsed"
    assert "cancelled" in refused.reason
