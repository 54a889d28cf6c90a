import pytest
from eth_account import Account

import brownie
from medmeter.toolchain.compiler import merged_abi

# Delays fixed at deploy: an admin transfer, a key recovery, a settlement's dispute window (seconds).
DELAYS = (60, 300, 120)


@pytest.fixture
def admin(accounts):
    return accounts[0]


@pytest.fixture
def ledger(MeteringLedger, MeteringLedgerExtension, admin):
    """The ledger at its address with the union of both ABIs: the extension's functions (registry,
    tariff, settlement) are served through the ledger's fallback."""
    deployed = MeteringLedger.deploy(admin, *DELAYS, {"from": admin})
    abi = merged_abi(MeteringLedger.abi, MeteringLedgerExtension.abi)
    return brownie.Contract.from_abi("MeteringLedger", deployed.address, abi)


@pytest.fixture
def clinic():
    return Account.create()
