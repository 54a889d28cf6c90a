"""Write bench/gas-snapshot.json: the gas of every ledger call in the deterministic scenario of
`bench.gas_profile`. Commit the file; tests/test_gas_snapshot.py fails when gas grows past it.

    python -m bench.gas_snapshot            # rewrite the snapshot after an intended change
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.gas_profile import measure
from medmeter.chain.rpc import connect, wait_until
from medmeter.toolchain import devnet
from medmeter.toolchain.compiler import compile_ledger
from medmeter.workspace import Workspace

SNAPSHOT = Path(__file__).with_name("gas-snapshot.json")


def main() -> None:
    import subprocess

    workspace = Workspace.locate()
    port = devnet.free_port(0)
    process = subprocess.Popen(devnet.anvil_command(workspace, port, None), stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: devnet.rpc_ready(url), 60)
        gas = measure(connect(url), compile_ledger(workspace))
    finally:
        process.terminate()
    SNAPSHOT.write_text(json.dumps(gas, indent=2, sort_keys=True) + "\n")
    print(json.dumps(gas, indent=2, sort_keys=True))
    print(f"written to {SNAPSHOT}")


if __name__ == "__main__":
    main()
