"""Two relay processes on the same input: every interaction recorded exactly once, honest counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from web3 import Web3

from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC, OPERATING_ROLES
from medmeter.relay.engine import decode_events
from medmeter.signing.interaction import InteractionSigner, Kind, iter_json_lines
from tests.support.chains import LedgerEnv, funded_account

RELAY_SCRIPT = """
import json, sys
from eth_account import Account
from medmeter.chain.deployment import Deployment
from medmeter.chain.ledger import Ledger
from medmeter.chain.rpc import connect
from medmeter.relay.engine import relay
from medmeter.signing.interaction import read_signed
from pathlib import Path
url, deployment, key, items = sys.argv[1:5]
data = json.loads(Path(deployment).read_text())
data.pop("deployed_at", None)
ledger = Ledger(connect(url), Deployment(**data), Account.from_key(key))
report = relay(ledger, read_signed(Path(items)), batch_size=50)
print(json.dumps({"recorded": len(report.recorded), "already": len(report.already_recorded),
                  "other": len(report.recorded_by_other), "rejected": [r.error_name for r in report.rejected]}))
"""


def _run_two(tmp_path: Path, env: LedgerEnv, keys: list[bytes]) -> list[dict]:
    signers = [InteractionSigner(env.ledger.domain, a) for a in env.institutions]
    items = [s.sign(env.interaction(Kind.SYNC, s.address)) for s in signers for _ in range(300)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(iter_json_lines(items)))
    deployment = tmp_path / "deployment.json"
    deployment.write_text(json.dumps(env.ledger.deployment.to_json()))
    url = env.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RELAY_SCRIPT, url, str(deployment), "0x" + key.hex(), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key in keys
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    response = env.w3.provider.make_request(
        "eth_getLogs",
        [
            {
                "address": env.ledger.address,
                "topics": [INTERACTION_RECORDED_TOPIC],
                "fromBlock": "0x0",
                "toBlock": "latest",
            }
        ],
    )
    events = decode_events(response["result"])
    keys_on_chain = [(e.institution, e.nonce) for e in events]
    assert len(keys_on_chain) == len(set(keys_on_chain)) == len(items)
    return [json.loads(out.strip().splitlines()[-1]) for out, _err in outputs]


def test_two_relays_from_one_account_wait_on_the_lock(tmp_path: Path, env: LedgerEnv) -> None:
    reports = _run_two(tmp_path, env, [env.admin.key, env.admin.key])
    assert sorted(r["recorded"] for r in reports) == [0, 900]
    assert all(r["recorded"] + r["already"] == 900 and r["rejected"] == [] for r in reports)


def test_two_relays_from_two_accounts_report_the_other_ones_items_as_recorded(tmp_path: Path, env: LedgerEnv) -> None:
    second = funded_account(env.w3)
    role = Web3.keccak(text="RELAYER_ROLE")
    assert "RELAYER_ROLE" in OPERATING_ROLES
    env.ledger.transactor.transact(env.ledger.contract.functions.grantRole(role, second.address))  # type: ignore[union-attr]
    reports = _run_two(tmp_path, env, [env.admin.key, second.key])
    assert sum(r["recorded"] for r in reports) == 900
    assert all(r["recorded"] + r["already"] == 900 and r["rejected"] == [] for r in reports)
