"""`brownie run scripts/deploy.py`: deploy the ledger with brownie's first account and record
it in deployments/<chain-id>.json so that `medmeter` commands find it."""

from brownie import MeteringLedger, accounts, chain  # type: ignore[attr-defined]
from medmeter.chain.deployment import Deployment, record_deployment
from medmeter.workspace import Workspace


def main() -> str:
    admin = accounts[0]
    ledger = MeteringLedger.deploy(admin, {"from": admin})
    receipt = ledger.tx
    path = record_deployment(
        Workspace.locate(),
        Deployment(
            chain_id=chain.id,
            address=ledger.address,
            block=receipt.block_number,
            tx_hash=receipt.txid,
            deployer=admin.address,
            abi=MeteringLedger.abi,
            source_hash="brownie",
        ),
    )
    print(f"MeteringLedger at {ledger.address}; deployment written to {path}")
    return ledger.address
