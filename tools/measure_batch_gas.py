"""Gas of `recordBatch` in its cheapest and most expensive shapes (figures quoted in docs/security.md).

    .venv/bin/python tools/measure_batch_gas.py

Starts its own anvil (60,000,000 gas blocks, as the test suite does), deploys fresh ledgers with the
default tariff and prints gasUsed per batch. The worst case is every item touching storage for the
first time: a fresh nonce word and fresh positions for both institutions of an exchange.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_anvil  # noqa: E402
from tests.helpers import LedgerEnv, deploy_env  # noqa: E402

from medmeter.chain import connect  # noqa: E402
from medmeter.compiler import compile_ledger  # noqa: E402
from medmeter.interaction import Kind  # noqa: E402
from medmeter.workspace import Workspace  # noqa: E402

BATCH = 500  # MeteringLedger.MAX_BATCH_SIZE
CREDIT_LINE = 10**12  # large enough that no debit is refused


def record(label: str, env: LedgerEnv, items: list) -> None:
    gas = env.record(*items)["gasUsed"]
    print(f"{label:<58} items={len(items):>3} gasUsed={gas:>11,} per item={gas / len(items):>8,.0f}", flush=True)


def main() -> None:
    workspace = Workspace(ROOT)
    artifact = compile_ledger(workspace)
    process, url = start_anvil(workspace)
    try:
        w3 = connect(url)
        env = deploy_env(w3, artifact, institutions=2, credit_line=CREDIT_LINE)
        a, b = env.institutions
        record("sync, one institution, first interaction (cold storage)", env, [env.signed(Kind.SYNC, a)])
        record("sync, one institution", env, [env.signed(Kind.SYNC, a) for _ in range(BATCH)])
        record("fetch, one institution", env, [env.signed(Kind.FETCH, a) for _ in range(BATCH)])
        record(
            "exchange, one consumer -> one provider",
            env,
            [env.signed(Kind.EXCHANGE, a, counterparty=b.address) for _ in range(BATCH)],
        )
        fresh = deploy_env(w3, artifact, institutions=BATCH, credit_line=CREDIT_LINE)
        record("sync, every item a fresh institution", fresh, [fresh.signed(Kind.SYNC, x) for x in fresh.institutions])
        pairs = deploy_env(w3, artifact, institutions=2 * BATCH, credit_line=CREDIT_LINE)
        consumers, providers = pairs.institutions[:BATCH], pairs.institutions[BATCH:]
        record(
            "exchange, every item a fresh consumer and fresh provider",
            pairs,
            [pairs.signed(Kind.EXCHANGE, c, counterparty=p.address) for c, p in zip(consumers, providers, strict=True)],
        )
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
