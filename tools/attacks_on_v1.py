"""Run issue 9's three operator attacks against the version-1 ledger (commit d8fa383) and print whether each
succeeded. Evidence that tests/contract/test_consent.py's attack tests fail on the old contract: there each
attack is refused.

    .venv/bin/python tools/attacks_on_v1.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import solcx
from eth_account import Account
from eth_account.messages import encode_typed_data

from medmeter.chain.rpc import Transactor, connect, wait_until
from medmeter.toolchain import devnet
from medmeter.toolchain.compiler import _error_messages, standard_json_input
from medmeter.toolchain.executables import install_solcx_shim
from medmeter.workspace import Workspace

OLD_COMMIT = "d8fa383"
OLD_TYPES = [
    {"name": "kind", "type": "uint8"},
    {"name": "institution", "type": "address"},
    {"name": "counterparty", "type": "address"},
    {"name": "category", "type": "uint16"},
    {"name": "records", "type": "uint32"},
    {"name": "dataHash", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint64"},
]
DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def compile_old(ws: Workspace) -> tuple[list, str]:
    with tempfile.TemporaryDirectory() as tmp:
        old = Workspace(Path(tmp))
        (old.root / "contracts").mkdir()
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:contracts/MeteringLedger.sol"],
            cwd=ws.root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (old.root / "contracts" / "MeteringLedger.sol").write_text(source)
        (old.root / "node_modules").symlink_to(ws.node_modules)
        compiler_input = standard_json_input(old)
        compiler_input["settings"]["optimizer"]["runs"] = 1_000_000
        shim = install_solcx_shim(ws, ws.state_dir / "solc-bin")
        try:
            out = solcx.compile_standard(
                compiler_input,
                solc_binary=shim,
                allow_paths=[str(old.root), str(ws.node_modules)],
                base_path=str(old.root),
            )
        except solcx.exceptions.SolcError as exc:
            raise SystemExit(_error_messages(exc.stdout_data)) from exc
    contract = out["contracts"]["contracts/MeteringLedger.sol"]["MeteringLedger"]
    return contract["abi"], "0x" + contract["evm"]["bytecode"]["object"]


def sign_old(key, ledger, chain_id: int, message: dict) -> tuple:
    payload = {
        "types": {"EIP712Domain": DOMAIN_TYPE, "Interaction": OLD_TYPES},
        "primaryType": "Interaction",
        "domain": {"name": "MeteringLedger", "version": "1", "chainId": chain_id, "verifyingContract": ledger.address},
        "message": message,
    }
    raw = bytes(Account.sign_message(encode_typed_data(full_message=payload), key).signature)
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    vs = (s | ((v - 27) << 255)).to_bytes(32, "big")
    fields = tuple(message[f["name"]] for f in OLD_TYPES)
    return (fields, r, vs)


def main() -> None:
    ws = Workspace.locate()
    abi, bytecode = compile_old(ws)
    port = devnet.free_port(0)
    process = subprocess.Popen(devnet.anvil_command(ws, port, None), stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: devnet.rpc_ready(url), 60)
        w3 = connect(url)
        operator = Account.create()
        w3.provider.make_request("anvil_setBalance", [operator.address, hex(10**24)])
        tx = Transactor(w3, operator)
        receipt = tx.transact(w3.eth.contract(abi=abi, bytecode=bytecode).constructor(operator.address))
        ledger = w3.eth.contract(address=receipt["contractAddress"], abi=abi)
        f = ledger.functions
        clinic, other, operator_key = Account.create(), Account.create(), Account.create()
        for i, account in enumerate((clinic, other)):
            tx.transact(f.registerInstitution(account.address, f"C-{i}".encode().ljust(32, b"\0"), "clinic", 1_000))
        tx.transact(f.setRate(2, 10, 2, "laboratory"))
        chain_id = w3.eth.chain_id

        def item(key, kind, who, counterparty, records, nonce):
            return sign_old(
                key,
                ledger,
                chain_id,
                {
                    "kind": kind,
                    "institution": who,
                    "counterparty": counterparty,
                    "category": 2,
                    "records": records,
                    "dataHash": b"\x11" * 32,
                    "nonce": nonce,
                    "deadline": 2**40,
                },
            )

        zero = "0x" + "00" * 20
        tx.transact(f.recordBatch([item(clinic.key, 0, clinic.address, zero, 50, 0)]))  # clinic earns 500
        before = f.balanceOf(clinic.address).call()
        # 1. rotate the clinic's key to the operator's, sign an exchange draining it, rotate back
        tx.transact(f.rotateSigner(clinic.address, operator_key.address))
        tx.transact(f.recordBatch([item(operator_key.key, 2, clinic.address, other.address, 700, 1)]))
        tx.transact(f.rotateSigner(clinic.address, clinic.address))
        after = f.balanceOf(clinic.address).call(), f.debtOf(clinic.address).call()
        print(
            f"attack 1 (operator rotates the key and signs): clinic balance {before} -> {after[0]}, debt {after[1]}: "
            f"{'SUCCEEDED' if after[0] < before else 'refused'}"
        )
        # 2. a fetch signed at 2 units a record is debited at 200 after a tariff move around the relay
        signed = item(other.key, 1, other.address, zero, 5, 0)
        tx.transact(f.setRate(2, 10, 200, "laboratory"))
        balance_before = f.balanceOf(other.address).call(), f.debtOf(other.address).call()
        tx.transact(f.recordBatch([signed]))
        balance_after = f.balanceOf(other.address).call(), f.debtOf(other.address).call()
        charged = (balance_before[0] - balance_after[0]) + (balance_after[1] - balance_before[1])
        print(
            f"attack 2 (repricing through the tariff): signed for 5 x 2 = 10 units, charged {charged}: "
            f"{'SUCCEEDED' if charged != 10 else 'refused'}"
        )
        # 3. a wrong root anchored first can never be replaced
        tx.transact(f.closePeriod())
        tx.transact(f.anchorSettlement(1, b"\x66" * 32, 2))
        try:
            f.anchorSettlement(1, b"\x77" * 32, 2).call({"from": operator.address})
            print("attack 3 (irreplaceable wrong root): the root could be replaced: refused")
        except Exception as exc:
            print(f"attack 3 (irreplaceable wrong root): replacing it reverts ({type(exc).__name__}): SUCCEEDED")
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
