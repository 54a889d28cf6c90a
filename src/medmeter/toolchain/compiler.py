"""Compile the ledger with solcjs (through py-solc-x), one cached artifact per EVM version.

The EVM version follows the chain: code compiled for cancun uses `MCOPY`, which a shanghai node
(Ganache 7.9.2) treats as an invalid opcode, so every view returning a string reverts there. The
version is $MEDMETER_EVM_VERSION when set, else what the node is probed to execute
(`detect_evm_version`), else cancun."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmeter.errors import CompilationError, EvmVersionError
from medmeter.fileio import write_json_atomic
from medmeter.toolchain.executables import install_solcx_shim
from medmeter.workspace import Workspace

if TYPE_CHECKING:
    from web3 import Web3

CONTRACT_NAME = "MeteringLedger"
SOLC_VERSION = "0.8.28"
# Oldest first; solc 0.8.28 compiles for nothing newer than cancun.
EVM_VERSIONS = ("paris", "shanghai", "cancun")
DEFAULT_EVM_VERSION = "cancun"
EVM_VERSION = DEFAULT_EVM_VERSION  # the default, kept under its old name
EVM_VERSION_ENV = "MEDMETER_EVM_VERSION"
# Creation code (eth_call without `to`) that runs an opcode a version introduced and stops:
# a node that lacks it answers "invalid opcode". `00` (STOP) is the control every node runs.
_PROBES = (
    ("cancun", "0x6000600060005e60005c5000"),  # MCOPY(0, 0, 0); TLOAD(0); POP; STOP
    ("shanghai", "0x5f5000"),  # PUSH0; POP; STOP
)
_CONTROL_PROBE = "0x00"
# Where the probe cannot run: the client's name, from web3_clientVersion, to its newest version.
_CLIENT_EVM_VERSIONS = (("ganache", "shanghai"),)
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
    evm_version: str = DEFAULT_EVM_VERSION


def checked_evm_version(value: str, origin: str) -> str:
    """`value` if solc can target it; else an error naming where the value came from."""
    version = value.strip().lower()
    if version not in EVM_VERSIONS:
        raise EvmVersionError(
            f"{origin} asks for EVM version {value!r}, which medmeter cannot compile for: use one of "
            f"{', '.join(EVM_VERSIONS)}."
        )
    return version


def configured_evm_version() -> str | None:
    """$MEDMETER_EVM_VERSION, checked; None when unset (then the node decides)."""
    value = os.environ.get(EVM_VERSION_ENV, "").strip()
    return checked_evm_version(value, f"${EVM_VERSION_ENV}") if value else None


def detect_evm_version(w3: Web3) -> str:
    """The newest EVM version the node executes, found by running one opcode of each version in an
    `eth_call`; from the client's name (web3_clientVersion) if the node refuses even the control
    probe; else the default. A transport failure is raised, not guessed around."""
    if _probe(w3, _CONTROL_PROBE):
        for version, code in _PROBES:
            if _probe(w3, code):
                return version
        return EVM_VERSIONS[0]
    response = w3.provider.make_request("web3_clientVersion", [])  # type: ignore[arg-type]
    client = str(response.get("result", "")).lower()
    for name, version in _CLIENT_EVM_VERSIONS:
        if name in client:
            return version
    return DEFAULT_EVM_VERSION


def evm_version_for(w3: Web3 | None, requested: str | None = None) -> str:
    """The EVM version to compile for: `requested` (a --evm-version option), else $MEDMETER_EVM_VERSION,
    else what the node `w3` executes, else cancun."""
    if requested:
        return checked_evm_version(requested, "--evm-version")
    if configured := configured_evm_version():
        return configured
    return detect_evm_version(w3) if w3 is not None else DEFAULT_EVM_VERSION


def _probe(w3: Web3, code: str) -> bool:
    response = w3.provider.make_request("eth_call", [{"data": code}, "latest"])  # type: ignore[arg-type]
    return "error" not in response and response.get("result") in ("0x", "0x0", "")


def standard_json_input(workspace: Workspace, evm_version: str = DEFAULT_EVM_VERSION) -> dict[str, Any]:
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
            "evmVersion": evm_version,
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


def compile_ledger(workspace: Workspace, *, use_cache: bool = True, evm_version: str | None = None) -> Artifact:
    """Compile `contracts/MeteringLedger.sol` for `evm_version` (default: $MEDMETER_EVM_VERSION, else
    cancun); reuse that version's cached artifact if sources and settings are unchanged."""
    import solcx  # lazy: py-solc-x pulls in heavy imports

    version = checked_evm_version(evm_version, "the caller") if evm_version else configured_evm_version()
    version = version or DEFAULT_EVM_VERSION
    compiler_input = standard_json_input(workspace, version)
    # The hash covers the settings, evmVersion among them: an artifact never passes for another version.
    source_hash = _source_hash(compiler_input, workspace)
    cache = artifact_path(workspace, version)
    if use_cache:
        for candidate in (cache, _legacy_artifact_path(workspace)):
            cached = _read_cached(candidate, source_hash, version)
            if cached is not None:
                return cached

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
        evm_version=version,
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


def artifact_path(workspace: Workspace, evm_version: str | None = None) -> Path:
    """`.medmeter/artifacts/MeteringLedger.<evm-version>.json`: one artifact per version."""
    version = evm_version or configured_evm_version() or DEFAULT_EVM_VERSION
    return workspace.artifacts_dir / f"{CONTRACT_NAME}.{version}.json"


def _legacy_artifact_path(workspace: Workspace) -> Path:
    """Where the single cancun artifact lived before there was one per version (still read)."""
    return workspace.artifacts_dir / f"{CONTRACT_NAME}.json"


def _read_cached(path: Path, source_hash: str, evm_version: str) -> Artifact | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(cached, dict) or cached.get("source_hash") != source_hash:
        return None
    fields = {"contract_name", "abi", "bytecode", "deployed_bytecode", "source_hash"}
    try:
        # The hash covers evmVersion, so the version is the one asked for (older files do not name it).
        return Artifact(**{k: v for k, v in cached.items() if k in fields}, evm_version=evm_version)
    except TypeError:
        return None


def _error_messages(stdout: str) -> str:
    try:
        errors = json.loads(stdout).get("errors", [])
    except (json.JSONDecodeError, AttributeError):
        return stdout[-2000:]
    return "\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors if e.get("severity") == "error")
