"""Export throughput: the numpy fast path against web3's per-log decoding, on a fresh anvil.

    .venv/bin/python -m bench.export_bench -n 100000            # the full run (about 2-4 minutes)
    .venv/bin/python -m bench.export_bench -n 5000 --naive 2000  # quick look

Generates N signed interactions (eth-account keys, coincurve signing), records them with
recordBatch in batches of --batch (one transaction per block on automine), then measures:

* fast:   `medmeter.export.exporter.Exporter` from the deployment block, cold (raw eth_getLogs JSON, numpy
          decode of the data words, batched timestamps, parquet parts, checkpoint) with and without
          the CSV view, and its decode step alone;
* per-log: the same raw logs decoded one by one with Python ints (the reference decoder);
* naive:  web3 `contract.events.InteractionRecorded.get_logs` plus one `get_block` per block
          (the tests' `reference_table`), over the first --naive interactions' blocks.

The fast and naive tables are compared row for row over the naive range. Not a test: prints figures.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from eth_account import Account
from tests.support.reference_decoder import decode_interaction, reference_table

from medmeter.app.operations import apply_default_tariff
from medmeter.chain.deployment import deploy_contract
from medmeter.chain.ledger import Ledger, batch_gas_limit, encode_record_batch
from medmeter.chain.rpc import Transactor, connect, wait_until
from medmeter.contract.facts import MAX_BATCH_SIZE
from medmeter.export.events import (
    INTERACTION_RECORDED_TOPIC,
    decode_interaction_logs,
    interaction_table,
)
from medmeter.export.exporter import TARGET_ROWS_PER_REQUEST, Exporter
from medmeter.export.logs import fetch_logs
from medmeter.export.reading import read_export
from medmeter.settlement.crediting import gross_units
from medmeter.signing.consent import registration
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, Kind
from medmeter.toolchain.compiler import compile_ledger
from medmeter.toolchain.devnet import anvil_command, free_port, rpc_ready
from medmeter.workspace import Workspace

INSTITUTIONS = 8
CREDIT_LINE = 2**63


def start_anvil(workspace: Workspace) -> tuple[subprocess.Popen[bytes], str]:
    """The devnet's anvil command without persistence, with room for very large batches."""
    port = free_port(0)
    command = anvil_command(workspace, port, None)
    command[command.index("--gas-limit") + 1] = "1000000000"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    if not wait_until(lambda: rpc_ready(url), 30):
        process.kill()
        raise RuntimeError("anvil did not start")
    return process, url


def signer_for(domain, account):  # -> object with .sign(Interaction)
    try:
        from medmeter.signing.interaction import InteractionSigner  # coincurve, ~10x faster where available

        return InteractionSigner(domain, account)
    except ImportError:
        from medmeter.signing.interaction import sign_interaction

        class Slow:
            def sign(self, interaction):
                return sign_interaction(interaction, domain, account)

        return Slow()


def generate_and_record(ledger: Ledger, admin, count: int, batch: int, seed: int) -> float:
    """Sign and record `count` interactions; returns the seconds it took."""
    w3 = ledger.w3
    started = time.perf_counter()
    institutions = [Account.create() for _ in range(INSTITUTIONS)]
    for index, account in enumerate(institutions):
        code, name = f"BENCH-{index:03d}", f"Bench Clinic {index}"
        consent = registration(account.address, code, name, 2**40, ledger.domain, account)
        ledger.register(account.address, code, name, CREDIT_LINE, 2**40, consent)
    rates = {c: ledger.call(ledger.contract.functions.rateOf(c))[:2] for c in range(1, 8)}
    signers = {a.address: signer_for(ledger.domain, a) for a in institutions}
    nonces = dict.fromkeys(signers, 0)
    rng = random.Random(seed)
    deadline = int(w3.eth.get_block("latest")["timestamp"]) + 30 * 24 * 3600
    chain_id = w3.eth.chain_id
    tx_nonce = w3.eth.get_transaction_count(admin.address)
    base_fee = w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
    hashes = []
    done = 0
    while done < count:
        size = min(batch, count - done)
        items = []
        for _ in range(size):
            actor = rng.choice(institutions).address
            kind = rng.choices((Kind.SYNC, Kind.FETCH, Kind.EXCHANGE), (0.45, 0.25, 0.30))[0]
            counterparty = ZERO_ADDRESS
            if kind is Kind.EXCHANGE:
                counterparty = rng.choice([a.address for a in institutions if a.address != actor])
            category, records = rng.randint(1, 7), rng.randint(1, 20)
            units = gross_units(kind.word, records, *rates[category])
            interaction = Interaction(
                kind, actor, counterparty, category, records, units, "0x" + rng.randbytes(32).hex(),
                nonces[actor], deadline,
            )  # fmt: skip
            nonces[actor] += 1
            items.append(signers[actor].sign(interaction))
        tx = {
            "to": ledger.address,
            "data": encode_record_batch(items),
            "gas": batch_gas_limit(size),
            "nonce": tx_nonce,
            "chainId": chain_id,
            "maxFeePerGas": 4 * base_fee + 10**9,
            "maxPriorityFeePerGas": 0,
        }
        raw = admin.sign_transaction(tx).raw_transaction
        response = w3.provider.make_request("eth_sendRawTransaction", ["0x" + raw.hex()])
        if "error" in response:
            raise RuntimeError(f"batch at {done} refused: {response['error']}")
        hashes.append(response["result"])
        tx_nonce += 1
        done += size
        print(f"\r  recorded {done:,}/{count:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for tx_hash in hashes:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=600, poll_latency=0.05)
        if receipt["status"] != 1:
            tx = w3.eth.get_transaction(tx_hash)
            try:
                w3.eth.call({"from": tx["from"], "to": tx["to"], "data": tx["input"]}, receipt["blockNumber"] - 1)
                reason = f"out of gas? used {receipt['gasUsed']} of {tx['gas']}"
            except Exception as exc:  # the decoded revert, for the message
                reason = ledger.errors.from_exception(exc) if hasattr(exc, "data") else exc
            raise RuntimeError(f"batch {tx_hash} reverted: {reason}")
    return time.perf_counter() - started


def deploy(workspace: Workspace, w3, admin) -> Ledger:
    ledger = Ledger(w3, deploy_contract(w3, Transactor(w3, admin), compile_ledger(workspace)), admin)
    apply_default_tariff(ledger)
    return ledger


def timed(label: str, events: int, fn):
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    print(f"  {label:<58} {seconds:8.2f} s  {events / seconds:>12,.0f} events/s")
    return value, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=100_000, help="Interactions to generate.")
    parser.add_argument(
        "--batch", type=int, default=MAX_BATCH_SIZE, help="Interactions per recordBatch (at most MAX_BATCH_SIZE)."
    )
    parser.add_argument(
        "--naive", type=int, default=None, help="Interactions for the naive path (default: all; it runs ~1,700/s)."
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    workspace = Workspace.locate()
    process, url = start_anvil(workspace)
    try:
        w3 = connect(url)
        admin = Account.create()
        w3.provider.make_request("anvil_setBalance", [admin.address, hex(10**27)])
        ledger = deploy(workspace, w3, admin)
        max_batch = int(ledger.call(ledger.contract.functions.MAX_BATCH_SIZE()))
        if args.batch > max_batch:
            print(
                f"the ledger takes at most {max_batch} interactions per recordBatch: --batch {max_batch}",
                file=sys.stderr,
            )
            args.batch = max_batch
        print(f"anvil {url}, ledger {ledger.address}; generating {args.count:,} interactions", file=sys.stderr)
        record_seconds = generate_and_record(ledger, admin, args.count, args.batch, args.seed)
        head = w3.eth.block_number
        first = ledger.deployment.block
        print(
            f"\nN = {args.count:,} interactions in blocks {first}..{head} "
            f"(signed and recorded in {record_seconds:.1f} s, batches of {args.batch})\n"
        )
        n = args.count
        with tempfile.TemporaryDirectory() as tmp:
            print("fast path (medmeter export):")
            result, fast_seconds = timed(
                "Exporter.run, cold: parquet + checkpoint + CSV view",
                n,
                lambda: Exporter(ledger, Path(tmp) / "a").run(),
            )
            assert result.rows_total == n, f"exported {result.rows_total} rows, expected {n}"
            _, no_csv_seconds = timed(
                "Exporter.run, cold: parquet + checkpoint, no CSV",
                n,
                lambda: Exporter(ledger, Path(tmp) / "b", write_csv=False).run(),
            )
            # The steps alone, over the same requests the exporter makes (about TARGET_ROWS_PER_REQUEST each).
            span = max(1, TARGET_ROWS_PER_REQUEST * (head - first + 1) // n)
            ranges = [(b, min(b + span - 1, head)) for b in range(first, head + 1, span)]
            batches, fetch_seconds = timed(
                f"  raw eth_getLogs JSON only ({len(ranges)} requests of {span} blocks)",
                n,
                lambda: [fetch_logs(w3, ledger.address, [INTERACTION_RECORDED_TOPIC], a, b) for a, b in ranges],
            )
            tables, decode_seconds = timed(
                "  numpy decode + arrow table of those logs",
                n,
                lambda: [
                    interaction_table(decode_interaction_logs(logs), timestamps=None, close_blocks=[], codes={})
                    for logs in batches
                ],
            )
            sample = batches[0]
            _, per_log_seconds = timed(
                f"per-log Python decode of the first {len(sample):,} raw logs (events.py)",
                len(sample),
                lambda: [decode_interaction(x) for x in sample],
            )
            per_log_rate = len(sample) / per_log_seconds
            batches.clear()  # free the raw logs before the naive run
            blocks = pa.concat_tables(tables).column("block_number").to_numpy()
            naive_events = min(args.naive or n, n)
            naive_to = int(blocks[naive_events - 1])
            naive_count = int((blocks <= naive_to).sum())
            print("naive path (web3):")
            naive, naive_seconds = timed(
                f"contract.events...get_logs + get_block, {naive_count:,} events",
                naive_count,
                lambda: reference_table(ledger, first, naive_to),
            )
            fast_rows = read_export(Path(tmp) / "a")
            fast_rows = fast_rows.slice(0, naive.num_rows)
            same = fast_rows.equals(naive)
            print(f"\nfast and naive tables identical over {naive.num_rows:,} rows: {same}")
            print(
                f"\nSUMMARY N={n:,}: fast export {n / fast_seconds:,.0f} events/s end to end "
                f"({n / no_csv_seconds:,.0f}/s without CSV; decode alone {n / decode_seconds:,.0f}/s, "
                f"eth_getLogs {n / fetch_seconds:,.0f}/s); per-log decode {per_log_rate:,.0f}/s; "
                f"naive web3 {naive_count / naive_seconds:,.0f} events/s "
                f"-> {(naive_seconds / naive_count) / (fast_seconds / n):,.0f}x"
            )
            if not same:
                sys.exit("the fast export differs from the naive decode")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
