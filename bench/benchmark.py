"""The benchmark: gas, end-to-end throughput, export speed and report time, each beside a naive
baseline measured in the same run, at several sizes to show how cost grows.

Runs on its own anvil (the devnet's command, without state persistence: at a million
interactions the persisted state would be gigabytes rewritten every few seconds) with its own
workspace under bench/work, so it never touches the demo's devnet or deployments.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from bench.gas_profile import measure as measure_gas
from medmeter.app.operations import apply_default_tariff, read_tariff
from medmeter.chain.deployment import deploy_contract
from medmeter.chain.ledger import Ledger, batch_gas_limit, encode_record_batch
from medmeter.chain.rpc import Transactor, connect, wait_until
from medmeter.contract.facts import MAX_BATCH_SIZE
from medmeter.fileio import write_json_atomic
from medmeter.relay.engine import MAX_IN_FLIGHT, relay
from medmeter.signing.consent import registration
from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, Kind, sign_interaction
from medmeter.signing.traffic import SimulatedInstitution, Tariff, TrafficGenerator
from medmeter.toolchain import devnet
from medmeter.toolchain.compiler import Artifact, compile_ledger
from medmeter.workspace import Workspace

BENCH_CHAIN_ID = 31338
# Registration consents the benchmark's clinics sign stay valid this long (unix time).
CONSENT_DEADLINE = 2**40
INSTITUTIONS = 10
CREDIT_LINE = 10**9
WINDOW = 5_000
# The states a full node keeps (geth's default); anvil keeps every block's by default, an archive node.
# Measured at 1,000,000 interactions: 5,034/s full against 3,077/s archive.
FULL_NODE_STATES = 128
# Explicit mining: how often the sealer looks at the pool, and a block gas limit that holds every
# batch the relay keeps in flight (each asks for batch_gas_limit(MAX_BATCH_SIZE) gas).
SEAL_INTERVAL_SECONDS = 0.01
EXPLICIT_BLOCK_GAS_LIMIT = (MAX_IN_FLIGHT + 1) * batch_gas_limit(MAX_BATCH_SIZE)
BATCH_SIZE = MAX_BATCH_SIZE  # the most the contract takes in one recordBatch
NAIVE_INTERACTIONS = 300
NAIVE_EXPORT_EVENTS = 20_000
Echo = Callable[[str], Any]


@dataclass
class SizeResult:
    interactions: int
    seconds: float
    sign_seconds: float
    relay_seconds: float
    gas_per_interaction: float
    calldata_bytes_per_interaction: float
    window_rates: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.interactions / self.seconds


@dataclass
class BenchChain:
    workspace: Workspace
    process: subprocess.Popen[bytes]
    rpc_url: str
    w3: Web3
    sealer: BlockSealer | None = None

    def stop(self) -> None:
        if self.sealer is not None:
            self.sealer.stop()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def bench_workspace(root: Workspace, folder: Path) -> Workspace:
    """A workspace of its own (reports, exports, deployments) sharing the project's sources."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in ("contracts", "tools", "node_modules", "package-lock.json"):
        (folder / name).symlink_to(root.root / name)
    return Workspace(folder)


class BlockSealer:
    """Mines a block with `evm_mine` whenever the node's pool holds transactions, checking every
    SEAL_INTERVAL_SECONDS: a sealer for `anvil --no-mining`, as a consortium chain's validators
    seal blocks on their own clock rather than one block per transaction."""

    def __init__(self, rpc_url: str) -> None:
        self.w3 = connect(rpc_url)
        self.blocks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sealer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        provider = self.w3.provider
        while not self._stop.wait(SEAL_INTERVAL_SECONDS):
            status = provider.make_request("txpool_status", [])  # type: ignore[arg-type]
            if int(status.get("result", {}).get("pending", "0x0"), 16):
                provider.make_request("evm_mine", [])  # type: ignore[arg-type]
                self.blocks += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def start_chain(workspace: Workspace, mining: str = "auto", state: str = "full") -> BenchChain:
    """anvil on a free port: `auto` mines one block per transaction (anvil's default); `explicit`
    runs it with --no-mining and a BlockSealer, with a block gas limit that holds MAX_IN_FLIGHT batches.
    `state`: "full" keeps the state of the last FULL_NODE_STATES blocks, as a geth full node does;
    "archive" keeps every block's (anvil's default, as the devnet runs), writing old ones to disk."""
    port = devnet.free_port(0)
    command = [*devnet.anvil_command(workspace, port, None)]
    command[command.index("--chain-id") + 1] = str(BENCH_CHAIN_ID)
    if mining == "explicit":
        command[command.index("--gas-limit") + 1] = str(EXPLICIT_BLOCK_GAS_LIMIT)
        command.append("--no-mining")
    if state == "full":
        command.extend(["--prune-history", str(FULL_NODE_STATES)])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rpc_url = f"http://127.0.0.1:{port}"
    if not wait_until(lambda: devnet.rpc_ready(rpc_url), 60):
        process.kill()
        raise RuntimeError("the benchmark's anvil did not start")
    sealer = BlockSealer(rpc_url) if mining == "explicit" else None
    return BenchChain(workspace, process, rpc_url, connect(rpc_url), sealer)


def deploy_ledger(chain: BenchChain, artifact: Artifact) -> tuple[Ledger, list[Any]]:
    w3 = chain.w3
    admin = Account.create()
    w3.provider.make_request("anvil_setBalance", [admin.address, hex(10**26)])  # type: ignore[arg-type]
    deployment = deploy_contract(w3, Transactor(w3, admin), artifact)
    ledger = Ledger(w3, deployment, admin)
    apply_default_tariff(ledger)
    clinics = [Account.create() for _ in range(INSTITUTIONS)]
    for index, clinic in enumerate(clinics):
        code, name = f"BENCH-{index:03d}", f"Bench Clinic {index}"
        consent = registration(clinic.address, code, name, CONSENT_DEADLINE, ledger.domain, clinic)
        ledger.register(clinic.address, code, name, CREDIT_LINE, CONSENT_DEADLINE, consent)
    return ledger, clinics


def _produce_traffic(
    keys: list[bytes], tariff: Tariff, domain: Domain, seed: int, now: int, total: int, out: Any
) -> None:
    """Producer process: the institutions' side, signing window after window into `out`."""
    institutions = [SimulatedInstitution(Account.from_key(k).address, Account.from_key(k), CREDIT_LINE) for k in keys]
    generator = TrafficGenerator(institutions, tariff, domain, seed, now, validate_fhir=False)
    done = 0
    while done < total:
        count = min(WINDOW, total - done)
        out.put(generator.take(count))
        done += count


def throughput(ledger: Ledger, clinics: list[Any], total: int, seed: int, echo: Echo) -> SizeResult:
    """Sign (each institution's key, in a second process, as institutions sign on their own
    machines) and relay `total` interactions, 5,000 per window; every receipt is checked by
    `relay`. The clock runs from the first signature to the last receipt."""
    tariff = read_tariff(ledger)
    now = int(ledger.w3.eth.get_block("latest")["timestamp"])
    context = multiprocessing.get_context("fork")
    windows = context.Queue(maxsize=2)
    producer = context.Process(
        target=_produce_traffic,
        args=([bytes(c.key) for c in clinics], tariff, ledger.domain, seed, now, total, windows),
        daemon=True,
    )
    result = SizeResult(total, 0.0, 0.0, 0.0, 0.0, 0.0)
    gas = calldata = done = 0
    started = time.perf_counter()
    producer.start()
    try:
        while done < total:
            window_started = time.perf_counter()
            items = windows.get(timeout=600)
            got_at = time.perf_counter()
            report = relay(ledger, items, batch_size=BATCH_SIZE)
            finished = time.perf_counter()
            if report.rejected or len(report.recorded) != len(items):
                raise RuntimeError(f"benchmark traffic was refused: {report.rejected[:1]}")
            calldata += sum(
                len(encode_record_batch(items[i : i + BATCH_SIZE])) for i in range(0, len(items), BATCH_SIZE)
            )
            gas += report.gas_used
            result.sign_seconds += got_at - window_started  # time spent waiting for signatures
            result.relay_seconds += finished - got_at
            result.window_rates.append(len(items) / (finished - window_started))
            done += len(items)
            if done % (20 * WINDOW) == 0 or done == total:
                echo(f"    {done:>9,} / {total:,}: {result.window_rates[-1]:,.0f} interactions/s in the last window")
    finally:
        producer.join(timeout=5)
        if producer.is_alive():
            producer.kill()
    result.seconds = time.perf_counter() - started
    result.gas_per_interaction = gas / total
    result.calldata_bytes_per_interaction = calldata / total
    return result


def naive_throughput(chain: BenchChain, ledger: Ledger, clinics: list[Any], count: int) -> float:
    """The naive design: one web3 `transact` per interaction, signed with eth-account's typed-data
    path, waiting for each receipt; the relayer is the node's unlocked account."""
    w3 = chain.w3
    relayer = w3.eth.accounts[0]
    ledger.grant_role("relayer", relayer)
    first_nonce = 10**9  # far from the fast run's nonces
    started = time.perf_counter()
    for index in range(count):
        clinic = clinics[index % len(clinics)]
        interaction = Interaction(
            Kind.SYNC, clinic.address, ZERO_ADDRESS, 2, 1, ledger.price(Kind.SYNC, 2, 1), "0x" + "11" * 32,
            first_nonce + index, 2**40,
        )  # fmt: skip
        signed = sign_interaction(interaction, ledger.domain, clinic)
        tx_hash = ledger.contract.functions.recordInteraction(signed.as_contract_arg()).transact({"from": relayer})
        w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)  # web3 default 0.1 s would flatter us
    return count / (time.perf_counter() - started)


def naive_export(ledger: Ledger, events: int) -> float:
    """web3's contract-event path over the first `events` interactions."""
    event = ledger.contract.events.InteractionRecorded
    head = ledger.w3.eth.block_number
    got = 0
    started = time.perf_counter()
    start = ledger.deployment.block
    while got < events and start <= head:
        end = min(start + 199, head)
        got += len(event.get_logs(from_block=start, to_block=end))
        start = end + 1
    return got / (time.perf_counter() - started)


def _exporter_seconds(output: str) -> float:
    """The export's own timing from its summary line ("... in 1.23 s ..."): the same span the
    in-process naive baseline is timed over, without the ~2 s of Python start-up."""
    match = re.search(r" in ([0-9.]+) s", output)
    if match is None:
        raise RuntimeError(f"export printed no timing: {output[-500:]}")
    return float(match.group(1))


def run_cli(chain: BenchChain, deployment_file: Path, *args: str) -> tuple[float, float, str]:
    """Run `medmeter --deployment FILE ARGS` against the bench chain; returns (seconds, peak RSS MiB, stdout)."""
    env = {**os.environ, "MEDMETER_RPC_URL": chain.rpc_url, "MEDMETER_HOME": str(chain.workspace.root)}
    command = [str(Path(sys.executable).with_name("medmeter")), "--deployment", str(deployment_file), *args]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    # ru_maxrss of children is the largest child so far; the report is the largest we run.
    return seconds, max(peak_kib, before) / 1024, done.stdout


def run(
    root: Workspace,
    sizes: list[int],
    results_path: Path,
    echo: Echo,
    *,
    naive_count: int = NAIVE_INTERACTIONS,
    seed: int = 1,
    mining: str = "auto",
    state: str = "full",
) -> dict[str, Any]:
    artifact = compile_ledger(root)
    workspace = bench_workspace(root, root.root / "bench" / "work")
    chain = start_chain(workspace, mining, state)
    try:
        echo("gas (deterministic scenario, bench/gas-snapshot.json has the full table):")
        gas = measure_gas(chain.w3, artifact)
        echo(
            f"    batch of 100: {gas['recordBatch_100_per_interaction']:,} gas per interaction; "
            f"single: {gas['recordInteraction_sync']:,}"
        )
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "gas_per_interaction_batch100": gas["recordBatch_100_per_interaction"],
            "gas_single_interaction": gas["recordInteraction_sync"],
            "gas": gas,
            "mining": mining,
            "node_state": state,
            "sizes": {},
        }
        largest = None
        for size in sizes:
            echo(
                f"throughput at {size:,} interactions (sign with each clinic's key, relay in batches of {BATCH_SIZE}):"
            )
            ledger, clinics = deploy_ledger(chain, artifact)
            outcome = throughput(ledger, clinics, size, seed, echo)
            ledger.close_period()
            deployment_file = workspace.root / f"deployment-{size}.json"
            write_json_atomic(deployment_file, ledger.deployment.to_json())
            # The interactions dataset is the parquet parts; the CSV view is written by `report`.
            export_seconds, _, export_output = run_cli(
                chain, deployment_file, "export", "--no-csv", "--out", str(workspace.root / f"export-{size}")
            )
            exporter_seconds = _exporter_seconds(export_output)
            report_seconds, report_rss, _ = run_cli(
                chain, deployment_file, "report", "--period", "1", "--out-dir", str(workspace.root / f"reports-{size}")
            )
            results["sizes"][str(size)] = {
                "interactions_per_second": round(outcome.per_second, 1),
                "waiting_for_signatures_seconds": round(outcome.sign_seconds, 2),
                "relay_seconds": round(outcome.relay_seconds, 2),
                "window_rates_min_max": [round(min(outcome.window_rates)), round(max(outcome.window_rates))],
                "window_rates": [round(rate) for rate in outcome.window_rates],
                "gas_per_interaction": round(outcome.gas_per_interaction),
                "calldata_bytes_per_interaction": round(outcome.calldata_bytes_per_interaction),
                "seconds_per_interaction": outcome.seconds / size,
                "export_process_seconds": round(export_seconds, 2),
                "export_process_events_per_second": round(size / export_seconds),
                "export_seconds": round(exporter_seconds, 2),
                "export_events_per_second": round(size / exporter_seconds),
                "report_seconds": round(report_seconds, 2),
                "report_peak_rss_mib": round(report_rss),
            }
            largest = (size, ledger, clinics)
            if "naive_interactions_per_second" not in results:
                # On the smallest chain: anvil slows down as the chain grows, and a baseline
                # measured on the largest chain would flatter the ratio.
                echo(f"naive baseline: {naive_count} transactions, one web3 transact per interaction")
                naive = naive_throughput(chain, ledger, clinics, naive_count)
                results["naive_interactions_per_second"] = round(naive, 1)
                results["naive_measured_at_size"] = size
            echo(
                f"    => {outcome.per_second:,.0f} interactions/s, export {size / exporter_seconds:,.0f} events/s "
                f"({size / export_seconds:,.0f} counting process start-up), report {report_seconds:.1f} s, "
                f"peak RSS {report_rss:,.0f} MiB"
            )
        assert largest is not None
        size, ledger, clinics = largest
        echo(f"naive export baseline: web3 contract-event get_logs over {NAIVE_EXPORT_EVENTS:,} events")
        results["naive_export_events_per_second"] = round(naive_export(ledger, min(NAIVE_EXPORT_EVENTS, size)))
        top = results["sizes"][str(size)]
        results["interactions_per_second"] = top["interactions_per_second"]
        results["export_events_per_second"] = top["export_events_per_second"]
        results["largest_size"] = size
        results["window_rates_spread"] = window_spread(results["sizes"])
        results.update(_service_figures(results_path))
        if str(1_000_000) in results["sizes"]:
            results["report_seconds_1m"] = results["sizes"]["1000000"]["report_seconds"]
            results["report_peak_rss_mib_1m"] = results["sizes"]["1000000"]["report_peak_rss_mib"]
        write_json_atomic(results_path, results)
        echo(format_table(results))
        echo(f"results written to {results_path}")
        return results
    finally:
        chain.stop()


def _service_figures(results_path: Path) -> dict[str, Any]:
    """The service benchmark's keys already in the results file: it writes its own figures there."""
    try:
        previous = json.loads(results_path.read_text())
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in previous.items() if key.startswith("service")}


def window_spread(sizes: dict[str, Any]) -> dict[str, Any]:
    """Every window's rate over all sizes against their median: the flat-cost check. The first
    window of each size also waits for the first 5,000 signatures with nothing to overlap them, so
    the spread is given with and without it."""
    every = [rate for row in sizes.values() for rate in row["window_rates"]]
    steady = [rate for row in sizes.values() for rate in row["window_rates"][1:]]

    def spread(rates: list[float]) -> dict[str, float]:
        if not rates:
            return {}
        median = statistics.median(rates)
        return {
            "median": round(median),
            "min_pct": round(100 * (min(rates) / median - 1), 1),
            "max_pct": round(100 * (max(rates) / median - 1), 1),
            "windows": len(rates),
        }

    return {"all_windows": spread(every), "after_first_window": spread(steady)}


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "",
        f"{'size':>10} {'interactions/s':>15} {'window min-max':>15} {'gas/interaction':>16} {'calldata B/int':>15} "
        f"{'µs/interaction':>15} {'export ev/s':>12} {'report s':>9} {'report MiB':>11}",
    ]
    for size, row in results["sizes"].items():
        low, high = row["window_rates_min_max"]
        lines.append(
            f"{int(size):>10,} {row['interactions_per_second']:>15,.0f} {f'{low:,}-{high:,}':>15} "
            f"{row['gas_per_interaction']:>16,} {row['calldata_bytes_per_interaction']:>15,} "
            f"{row['seconds_per_interaction'] * 1e6:>15,.0f} {row['export_events_per_second']:>12,} "
            f"{row['report_seconds']:>9} {row['report_peak_rss_mib']:>11,}"
        )
    lines += [
        "",
        f"gas per interaction, batch of 100 (deterministic): {results['gas_per_interaction_batch100']:,}",
        f"gas for a single-interaction transaction:         {results['gas_single_interaction']:,}",
        f"end-to-end interactions/s: {results['interactions_per_second']:,.0f}  vs naive "
        f"{results['naive_interactions_per_second']:,.0f}  "
        f"(x{results['interactions_per_second'] / results['naive_interactions_per_second']:,.1f})",
        f"export events/s:           {results['export_events_per_second']:,}  vs naive "
        f"{results['naive_export_events_per_second']:,}",
    ]
    for label, spread in results["window_rates_spread"].items():
        if spread:
            lines.append(
                f"window rates, {label.replace('_', ' ')}: median {spread['median']:,}/s, "
                f"{spread['min_pct']:+.1f}% .. {spread['max_pct']:+.1f}% over {spread['windows']} windows"
            )
    return "\n".join(lines)
