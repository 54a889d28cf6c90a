"""Compile the ledger with solcjs (through py-solc-x), cached by source hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmeter.errors import CompilationError
from medmeter.fileio import write_json_atomic
from medmeter.toolchain import install_solcx_shim
from medmeter.workspace import Workspace

CONTRACT_NAME = "MeteringLedger"
SOLC_VERSION = "0.8.28"
EVM_VERSION = "cancun"
# Runs tuned for a contract whose hot path (recordBatch) runs millions of times, as high as lets both the
# ledger and its extension stay under the 24,576-byte code limit (at 100,000 the extension is 24,690 bytes;
# the ledger's recording code is the same from 20,000 up).
OPTIMIZER_RUNS = 20_000
# Served through the ledger's fallback (delegatecall); clients use the union of both ABIs.
EXTENSION_NAME = "MeteringLedgerExtension"


@dataclass(frozen=True)
class Artifact:
    contract_name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    source_hash: str


def standard_json_input(workspace: Workspace) -> dict[str, Any]:
    sources = {
        f"contracts/{path.name}": {"content": path.read_text()}
        for path in sorted(workspace.contracts_dir.glob("*.sol"))
    }
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            # Relative to the workspace (the compiler's base path), so the input, and with it the
            # artifact cache key, is the same wherever the project is checked out.
            "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "viaIR": True,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def _source_hash(compiler_input: dict[str, Any], workspace: Workspace) -> str:
    digest = hashlib.sha256(json.dumps(compiler_input, sort_keys=True).encode())
    # Imported OpenZeppelin sources are part of the build too.
    lock = workspace.root / "package-lock.json"
    if lock.is_file():
        digest.update(lock.read_bytes())
    return digest.hexdigest()


def compile_ledger(workspace: Workspace, *, use_cache: bool = True) -> Artifact:
    """Compile `contracts/MeteringLedger.sol`; reuse the cached artifact if sources are unchanged."""
    import solcx  # lazy: py-solc-x pulls in heavy imports

    compiler_input = standard_json_input(workspace)
    source_hash = _source_hash(compiler_input, workspace)
    cache = workspace.artifacts_dir / f"{CONTRACT_NAME}.json"
    if use_cache and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("source_hash") == source_hash:
            return Artifact(**cached)

    shim_dir = workspace.state_dir / "solc-bin"
    shim = install_solcx_shim(workspace, shim_dir)
    try:
        output = solcx.compile_standard(
            compiler_input,
            solc_binary=shim,
            allow_paths=[str(workspace.root), str(workspace.node_modules)],
            base_path=str(workspace.root),
        )
    except solcx.exceptions.SolcError as exc:
        raise CompilationError(
            f"{CONTRACT_NAME} did not compile:\n{_error_messages(exc.stdout_data)}\nFix the Solidity error above."
        ) from exc
    contract = output["contracts"][f"contracts/{CONTRACT_NAME}.sol"][CONTRACT_NAME]
    extension = output["contracts"][f"contracts/{EXTENSION_NAME}.sol"][EXTENSION_NAME]
    artifact = Artifact(
        contract_name=CONTRACT_NAME,
        abi=merged_abi(contract["abi"], extension["abi"]),
        bytecode="0x" + contract["evm"]["bytecode"]["object"],
        deployed_bytecode="0x" + contract["evm"]["deployedBytecode"]["object"],
        source_hash=source_hash,
    )
    write_json_atomic(cache, artifact.__dict__)
    return artifact


def merged_abi(ledger: list[dict[str, Any]], extension: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's ABI plus every entry of its extension's that the ledger does not define itself (the
    extension's constructor excluded): what a client calls at the ledger's address."""

    def key(entry: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
        return (entry["type"], entry.get("name", ""), tuple(i["type"] for i in entry.get("inputs", [])))

    known = {key(entry) for entry in ledger}
    extra = [e for e in extension if e["type"] not in ("constructor", "fallback") and key(e) not in known]
    return ledger + extra


def artifact_path(workspace: Workspace) -> Path:
    return workspace.artifacts_dir / f"{CONTRACT_NAME}.json"


def _error_messages(stdout: str) -> str:
    try:
        errors = json.loads(stdout).get("errors", [])
    except (json.JSONDecodeError, AttributeError):
        return stdout[-2000:]
    return "\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors if e.get("severity") == "error")
