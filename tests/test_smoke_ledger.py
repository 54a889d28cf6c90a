from medmeter.interaction import Kind


def test_sync_credits_units_from_tariff(env):
    clinic = env.institutions[0]
    rate_sync, _, _ = env.ledger.call(env.ledger.contract.functions.rateOf(2))
    env.record(env.signed(Kind.SYNC, clinic, records=7))
    assert env.ledger.position(clinic.address).balance == 7 * rate_sync


def test_cli_batch_limit_is_the_contracts(env):
    """The CLI's --batch-size bound restates the contract's MAX_BATCH_SIZE; they must not drift."""
    from medmeter.cli import MAX_BATCH_SIZE

    assert env.ledger.call(env.ledger.contract.functions.MAX_BATCH_SIZE()) == MAX_BATCH_SIZE
