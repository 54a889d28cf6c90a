from medmeter.signing.interaction import Kind


def test_sync_credits_units_from_tariff(env):
    clinic = env.institutions[0]
    rate_sync, _, _ = env.ledger.call(env.ledger.contract.functions.rateOf(2))
    env.record(env.signed(Kind.SYNC, clinic, records=7))
    assert env.ledger.position(clinic.address).balance == 7 * rate_sync
