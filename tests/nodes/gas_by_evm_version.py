"""Gas per EVM version: bench/gas_profile.py's deterministic scenario, compiled for shanghai and for
cancun, on fresh nodes. Run: `.venv/bin/python -m tests.nodes.gas_by_evm_version` (about a minute).

Rows: each artifact on anvil pinned to `--hardfork cancun` (same gas schedule, so the difference is
the code's), the shanghai artifact on Ganache 7.9.2 (the node that needs it), and the cancun artifact
on anvil's default hardfork (prague: EIP-7623's calldata floor applies to big batches)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.gas_profile import _key, measure
from web3 import Web3

from medmeter.chain.deployment import fund_account
from medmeter.toolchain.compiler import compile_ledger
from medmeter.workspace import Workspace
from tests.nodes.conftest import NODE_KINDS, NodeKind, _anvil, start_node

KEYS = ("deploy", "recordInteraction_sync", "recordBatch_100", "recordBatch_100_per_interaction", "recordBatch_180")


def run(kind: NodeKind, evm_version: str, folder: Path) -> dict[str, int]:
    node = start_node(kind, folder)
    try:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 120}))
        fund_account(w3, _key("admin").address)
        return measure(w3, compile_ledger(Workspace(Path.cwd()), evm_version=evm_version))
    finally:
        node.stop()


def main() -> None:
    anvil_cancun = NodeKind("anvil-hardfork-cancun", _anvil("--hardfork", "cancun"), "cancun", "anvil_setBalance")
    rows = [
        ("anvil --hardfork cancun", anvil_cancun, "shanghai"),
        ("anvil --hardfork cancun", anvil_cancun, "cancun"),
        ("ganache 7.9.2 (shanghai)", NODE_KINDS["ganache-7.9.2"], "shanghai"),
        ("anvil default (prague)", NODE_KINDS["anvil-automine"], "cancun"),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, kind, version) in enumerate(rows):
            gas = run(kind, version, Path(tmp) / str(index))
            results.append({"node": label, "evm_version": version, **{k: gas[k] for k in KEYS}})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
