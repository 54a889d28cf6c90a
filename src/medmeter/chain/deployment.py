"""Deploying the ledger and finding it again (`deployments/<chain-id>.json`), and funding the
operator's key on a development node so that it can pay for gas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import TimeExhausted, Web3RPCError

from medmeter.chain.rpc import Transactor
from medmeter.contract.facts import LEDGER_ID, OPERATING_ROLES
from medmeter.errors import DeploymentError, FundingError, InputError
from medmeter.fileio import write_json_atomic
from medmeter.toolchain.compiler import DEFAULT_EVM_VERSION, Artifact, compile_ledger, evm_version_for
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
    evm_version: str = DEFAULT_EVM_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "address": self.address,
            "block": self.block,
            "tx_hash": self.tx_hash,
            "deployer": self.deployer,
            "source_hash": self.source_hash,
            "evm_version": self.evm_version,
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
        evm_version=artifact.evm_version,
    )


def deploy(
    workspace: Workspace,
    w3: Web3,
    transactor: Transactor,
    artifact: Artifact | None = None,
    *,
    evm_version: str | None = None,
    recovery_delay: int = DEFAULT_RECOVERY_DELAY,
    dispute_window: int = DEFAULT_DISPUTE_WINDOW,
    admin_transfer_delay: int = DEFAULT_ADMIN_TRANSFER_DELAY,
) -> Deployment:
    """Compile (cached) for the node's EVM version, deploy and record `deployments/<chain-id>.json`.

    The version is `evm_version` (a --evm-version option), else $MEDMETER_EVM_VERSION, else the newest
    the node executes (`compiler.detect_evm_version`): cancun code reverts on a shanghai node."""
    if artifact is None:
        artifact = compile_ledger(workspace, evm_version=evm_version_for(w3, evm_version))
    deployment = deploy_contract(
        w3,
        transactor,
        artifact,
        admin_transfer_delay=admin_transfer_delay,
        recovery_delay=recovery_delay,
        dispute_window=dispute_window,
    )
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
            evm_version=str(data.get("evm_version", DEFAULT_EVM_VERSION)),
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
    expected = LEDGER_ID
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


# ---------------------------------------------------------------------------------- roles at deploy

# The words a roles file uses, each the contract's role constant: {"registrar": "REGISTRAR_ROLE", ...}.
ROLE_WORDS = {name.removesuffix("_ROLE").lower(): name for name in OPERATING_ROLES}
ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class RoleAssignment:
    """Who holds one operating role after `deploy --roles`: `from_file` is False when the file did not name
    the role, so the deployer kept it."""

    word: str
    address: str
    from_file: bool


def read_roles_file(path: Path, keystore_address: Callable[[str], str] | None = None) -> dict[str, str]:
    """The operating roles a roles file hands out, as {role word: checksummed address}.

    The file is one JSON object mapping role names (registrar, tariff, relayer, settler, pauser; `_ROLE`
    suffix and case ignored) to addresses, or to keystore names when `keystore_address` resolves them
    (a value not starting with 0x). Unknown names, the admin role (it moves only in two steps),
    malformed or zero addresses, and a role given twice are refused, naming the file and the entry."""
    from eth_utils import to_checksum_address

    words = ", ".join(ROLE_WORDS)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the roles file {path} ({exc.strerror or exc}): check the path.") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(
            f"{path} is not JSON ({type(exc).__name__}): write one object mapping role names to addresses, "
            f'e.g. {{"registrar": "0x...", "relayer": "0x..."}}.'
        ) from None
    if not isinstance(data, dict) or not data:
        raise InputError(
            f"{path} must hold one non-empty JSON object mapping role names ({words}) to addresses, "
            f'e.g. {{"registrar": "0x...", "relayer": "0x..."}}.'
        )
    roles: dict[str, str] = {}
    for key, value in data.items():
        word = str(key).strip().lower().removesuffix("_role")
        if word in ("admin", "default_admin"):
            raise InputError(
                f"{path}: {key!r} cannot be handed out at deploy: the deployer keeps the admin role, which moves "
                "only in two steps after the delay (AccessControlDefaultAdminRules); remove it from the file."
            )
        if word not in ROLE_WORDS:
            raise InputError(f"{path}: unknown role {key!r}: the roles are {words}.")
        if word in roles:
            raise InputError(f"{path}: role {word} is given twice: keep one entry for it.")
        if isinstance(value, str) and keystore_address is not None and not value.strip().startswith("0x"):
            address = to_checksum_address(keystore_address(value.strip()))
        elif not isinstance(value, str) or not _well_formed_address(value.strip()):
            raise InputError(
                f"{path}: the address of {word} ({value!r}) is not an Ethereum address (0x and 40 hex digits, "
                "with a valid checksum if it mixes cases): copy it again from `medmeter wallet list`."
            )
        else:
            address = to_checksum_address(value.strip())
        if address == ZERO_ADDRESS:
            raise InputError(f"{path}: {word} cannot go to the zero address: nobody could use the role.")
        roles[word] = address
    return roles


def roles_differing(w3: Web3, deployment: Deployment, roles: dict[str, str], deployer: str) -> list[str]:
    """The role words of `roles` that the deployed ledger does not hold as a fresh `deploy --roles`
    would leave them: the named address lacks the role, or the deployer still holds one it handed on."""
    contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
    deployer = Web3.to_checksum_address(deployer)
    differing = []
    for word, address in roles.items():
        role_id = Web3.keccak(text=ROLE_WORDS[word])
        held = contract.functions.hasRole(role_id, address).call()
        if not held or (address != deployer and contract.functions.hasRole(role_id, deployer).call()):
            differing.append(word)
    return differing


def _well_formed_address(value: str) -> bool:
    """0x and 40 hex digits, and, when it mixes cases, a valid EIP-55 checksum (a mistyped digit of a
    checksummed address is caught instead of granting a role to nobody's key)."""
    from eth_utils import is_address, is_checksum_address

    digits = value[2:]
    mixed = digits != digits.lower() and digits != digits.upper()
    return value.startswith("0x") and is_address(value) and (not mixed or is_checksum_address(value))


def hand_over_roles(
    w3: Web3, transactor: Transactor, deployment: Deployment, roles: dict[str, str]
) -> list[RoleAssignment]:
    """Grant each role of `roles` to its address and revoke it from the deployer (who keeps the admin
    role and every operating role the file does not name). Returns who holds each operating role."""
    from medmeter.contract.revert_advice import ErrorDecoder

    contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
    deployer = Web3.to_checksum_address(transactor.address)
    previous = transactor.decode_error
    if previous is None:  # refusals read as the ledger's custom errors, with their advice
        transactor.decode_error = ErrorDecoder(deployment.abi).from_exception
    assignments = []
    try:
        for word, name in ROLE_WORDS.items():
            address = roles.get(word)
            if address is None or address == deployer:
                assignments.append(RoleAssignment(word, deployer, address is not None))
                continue
            role_id = Web3.keccak(text=name)
            transactor.transact(contract.functions.grantRole(role_id, address))
            transactor.transact(contract.functions.revokeRole(role_id, deployer))
            assignments.append(RoleAssignment(word, address, True))
    finally:
        transactor.decode_error = previous
    return assignments


# ---------------------------------------------------------------------------------- funding

DEV_FUNDING_WEI = 10**24
# What a dev account keeps for itself when it pays for another: funding must not empty it.
DEV_ACCOUNT_SHARE = 10
# Each development node's own way to set a balance; a node answers the others with an error.
SET_BALANCE_METHODS = ("anvil_setBalance", "hardhat_setBalance", "evm_setAccountBalance")
TRANSFER_GAS = 21_000
FUNDING_RECEIPT_TIMEOUT_SECONDS = 120


def fund_account(w3: Web3, address: str, amount: int = DEV_FUNDING_WEI) -> str:
    """Give `address` ether to pay for gas if it has none; returns how (a method name, "transfer from
    <dev account>", or "already funded").

    Tries each node's set-balance method (anvil, Hardhat, Ganache), then a plain transfer from the
    node's first unlocked, funded account (`eth_accounts`; a Hardhat or Ganache node, or a geth
    --dev). A node with neither (a real network) raises FundingError saying how to fund the key."""
    address = Web3.to_checksum_address(address)
    if w3.eth.get_balance(address) > 0:
        return "already funded"
    for method in SET_BALANCE_METHODS:
        response = w3.provider.make_request(method, [address, hex(amount)])  # type: ignore[arg-type]
        if "error" not in response and w3.eth.get_balance(address) > 0:
            return method
    if (source := fund_from_dev_account(w3, address, amount)) is not None:
        return f"transfer from {source}"
    raise FundingError(
        f"account {address} has no ether on chain {w3.eth.chain_id} and the node neither sets balances nor "
        f"holds an unlocked funded account: send it ether from an account that has some (e.g. `cast send "
        f"--value 1ether {address} --private-key <funded key> --rpc-url <node>`), then run the command again."
    )


def fund_from_dev_account(w3: Web3, address: str, amount: int = DEV_FUNDING_WEI) -> str | None:
    """Send `address` up to `amount` wei from the node's first unlocked account that can spare it
    (at most a tenth of its balance); returns that account, or None if the node has none."""
    response = w3.provider.make_request("eth_accounts", [])  # type: ignore[arg-type]
    accounts = response.get("result") if "error" not in response else None
    for account in accounts or []:
        account = Web3.to_checksum_address(account)
        if account == Web3.to_checksum_address(address):
            continue
        value = min(amount, w3.eth.get_balance(account) // DEV_ACCOUNT_SHARE)
        if value == 0:
            continue
        # The gas is given: Ganache's default for eth_sendTransaction is 90,000, others estimate.
        sent = w3.provider.make_request(  # type: ignore[arg-type]
            "eth_sendTransaction",
            [{"from": account, "to": Web3.to_checksum_address(address), "value": hex(value), "gas": hex(TRANSFER_GAS)}],
        )
        if "error" in sent:
            continue  # listed but locked (a node that lists accounts it cannot sign for)
        try:
            receipt = w3.eth.wait_for_transaction_receipt(
                sent["result"], timeout=FUNDING_RECEIPT_TIMEOUT_SECONDS, poll_latency=0.1
            )
        except TimeExhausted:
            raise FundingError(
                f"the transfer {sent['result']} funding {address} from the node's account {account} was not mined "
                f"within {FUNDING_RECEIPT_TIMEOUT_SECONDS} s: check that the node is mining, then run the command "
                "again."
            ) from None
        if receipt["status"] == 1:
            return account
    return None
