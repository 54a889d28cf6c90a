"""`brownie run scripts/deploy.py`: deploy the ledger with brownie's first account on brownie's
network and record it in deployments/brownie/<chain-id>.json.

It never writes deployments/<chain-id>.json, the file every `medmeter` command reads: brownie's
network is its own anvil, gone when the script ends, and the workspace's ledger must survive it."""

from scripts._workspace import brownie_workspace

from brownie import MeteringLedger, MeteringLedgerExtension, accounts, chain  # type: ignore[attr-defined]
from medmeter.chain.deployment import (
    DEFAULT_ADMIN_TRANSFER_DELAY,
    DEFAULT_DISPUTE_WINDOW,
    DEFAULT_RECOVERY_DELAY,
    Deployment,
    record_deployment,
)
from medmeter.toolchain.compiler import merged_abi


def main() -> str:
    admin = accounts[0]
    delays = (DEFAULT_ADMIN_TRANSFER_DELAY, DEFAULT_RECOVERY_DELAY, DEFAULT_DISPUTE_WINDOW)
    ledger = MeteringLedger.deploy(admin, *delays, {"from": admin})
    receipt = ledger.tx
    path = record_deployment(
        brownie_workspace(),
        Deployment(
            chain_id=chain.id,
            address=ledger.address,
            block=receipt.block_number,
            tx_hash=receipt.txid,
            deployer=admin.address,
            abi=merged_abi(MeteringLedger.abi, MeteringLedgerExtension.abi),
            source_hash="brownie",
        ),
    )
    print(f"MeteringLedger at {ledger.address} on brownie's network; deployment written to {path}")
    return ledger.address
