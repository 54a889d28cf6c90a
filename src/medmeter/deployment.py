"""Deploying the ledger and finding it again: `deployments/<chain-id>.json`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import Web3RPCError

from medmeter.chain import Transactor
from medmeter.compiler import Artifact, compile_ledger
from medmeter.errors import DeploymentError
from medmeter.fileio import write_json_atomic
from medmeter.workspace import Workspace


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    address: str
    block: int
    tx_hash: str
    deployer: str
    abi: list[dict[str, Any]]
    source_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "address": self.address,
            "block": self.block,
            "tx_hash": self.tx_hash,
            "deployer": self.deployer,
            "source_hash": self.source_hash,
            "deployed_at": int(time.time()),
            "abi": self.abi,
        }


def deployment_path(workspace: Workspace, chain_id: int) -> Path:
    return workspace.deployments_dir / f"{chain_id}.json"


# Delays fixed at deploy (seconds). The recovery delay is the documented default of 48 hours; a devnet demo
# may pass minutes. The dispute window is how long a proposed settlement root can still be superseded.
DEFAULT_ADMIN_TRANSFER_DELAY = 24 * 3600
DEFAULT_RECOVERY_DELAY = 48 * 3600
DEFAULT_DISPUTE_WINDOW = 48 * 3600


def deploy_contract(
    w3: Web3,
    transactor: Transactor,
    artifact: Artifact,
    *,
    admin_transfer_delay: int = DEFAULT_ADMIN_TRANSFER_DELAY,
    recovery_delay: int = DEFAULT_RECOVERY_DELAY,
    dispute_window: int = DEFAULT_DISPUTE_WINDOW,
) -> Deployment:
    """Deploy the ledger with `transactor`'s account as admin (it gets every role); writes no file."""
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = transactor.transact(
        factory.constructor(transactor.address, admin_transfer_delay, recovery_delay, dispute_window)
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        address=receipt["contractAddress"],
        block=receipt["blockNumber"],
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        deployer=transactor.address,
        abi=artifact.abi,
        source_hash=artifact.source_hash,
    )


def deploy(workspace: Workspace, w3: Web3, transactor: Transactor, artifact: Artifact | None = None) -> Deployment:
    """Compile (cached), deploy and record `deployments/<chain-id>.json`."""
    deployment = deploy_contract(w3, transactor, artifact or compile_ledger(workspace))
    record_deployment(workspace, deployment)
    return deployment


def record_deployment(workspace: Workspace, deployment: Deployment) -> Path:
    """Write `deployments/<chain-id>.json` (used by every later command)."""
    path = deployment_path(workspace, deployment.chain_id)
    write_json_atomic(path, deployment.to_json())
    return path


def load_deployment(workspace: Workspace, w3: Web3, path: Path | None = None) -> Deployment:
    """The deployment for the connected chain, checked to be a live MeteringLedger."""
    chain_id = w3.eth.chain_id
    path = path or deployment_path(workspace, chain_id)
    if not path.is_file():
        raise DeploymentError(
            f"no deployment for chain {chain_id} ({path} is missing): run `medmeter deploy` first, "
            "or pass --deployment with the right file."
        )
    try:
        data = json.loads(path.read_text())
        deployment = Deployment(
            chain_id=int(data["chain_id"]),
            address=Web3.to_checksum_address(data["address"]),
            block=int(data["block"]),
            tx_hash=str(data.get("tx_hash", "")),
            deployer=str(data.get("deployer", "")),
            abi=list(data["abi"]),
            source_hash=str(data.get("source_hash", "")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DeploymentError(
            f"{path} is not a medmeter deployment file ({exc}): redeploy with `medmeter deploy`."
        ) from None
    if deployment.chain_id != chain_id:
        raise DeploymentError(
            f"{path} is for chain {deployment.chain_id} but the node is chain {chain_id}: use the right --rpc-url."
        )
    verify_ledger(w3, deployment)
    return deployment


def verify_ledger(w3: Web3, deployment: Deployment) -> None:
    """Refuse an address that holds no code or another contract."""
    code = w3.eth.get_code(deployment.address)
    if len(code) == 0:
        raise DeploymentError(
            f"no contract at {deployment.address} on chain {deployment.chain_id}: the chain was reset since the "
            "deployment; run `medmeter deploy` again (or restore the devnet state)."
        )
    contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
    expected = Web3.keccak(text="medmeter.MeteringLedger.v2")
    try:
        ledger_id = contract.functions.LEDGER_ID().call()
    except (requests.RequestException, Web3RPCError):
        raise  # the node failed, not the contract: the CLI says so
    except Exception as exc:  # any other failure here means "not our contract"
        raise DeploymentError(
            f"the contract at {deployment.address} is not a MeteringLedger ({type(exc).__name__}): check the "
            "deployment file and --rpc-url."
        ) from None
    if ledger_id != expected:
        raise DeploymentError(f"the contract at {deployment.address} is not a MeteringLedger v2: check the deployment.")
