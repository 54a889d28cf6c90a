import pytest
from eth_account import Account


@pytest.fixture
def admin(accounts):
    return accounts[0]


@pytest.fixture
def ledger(MeteringLedger, admin):
    return MeteringLedger.deploy(admin, {"from": admin})


@pytest.fixture
def clinic():
    return Account.create()
