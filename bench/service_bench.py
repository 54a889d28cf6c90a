"""Benchmark of the platform service: clients POST batches of 100 signed interactions over loopback to
`medmeter serve` on anvil automine, on the same 2-core machine.

    .venv/bin/python -m bench.service_bench --count 100000 --clients 4 --paced-rate 3000 [--out bench/results.json]

Two phases on one service and one chain:

* **saturation** (closed loop): each client posts its next body as soon as the last is answered;
  gives acknowledged/s and recorded/s sustained over `--count` interactions. Its latencies are
  those of a saturated queue: with N clients always waiting, mean POST→ack is N x 100 / throughput
  by Little's law, whatever the service does.
* **paced** (open loop): the same clients post at a fixed offered rate (`--paced-rate` items/s) for
  `--paced-seconds`; latency is measured from the moment each POST was due, not from when it was
  sent, so a stall counts against the service (no coordinated omission). This is the latency a
  hospital system sees when the platform carries that load.

Also the service's CPU time per interaction (from /proc) and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tests.conftest import start_anvil
from tests.service.conftest import Server, make_workspace
from tests.support.chains import LedgerEnv, deploy_env, priced_units

from medmeter.chain.rpc import connect
from medmeter.contract.facts import MAX_BATCH_SIZE
from medmeter.signing.interaction import InteractionSigner, Kind, iter_json_lines
from medmeter.toolchain.compiler import compile_ledger
from medmeter.workspace import Workspace

ITEMS_PER_POST = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    """What the clients saw in one phase: per-POST latencies and when each item was posted."""

    ack_latency: list[float] = field(default_factory=list)
    posted_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, session: requests.Session, url: str, body: str, due: float) -> None:
        answer = session.post(url, data=body, headers={"content-type": "application/json"})
        done = time.perf_counter()
        if answer.status_code != 202:
            raise SystemExit(f"the service answered {answer.status_code}: {answer.text[:300]}")
        wall_due = time.time() - (done - due)
        with self.lock:
            self.ack_latency.append(done - due)
            for entry in answer.json()["items"]:
                self.posted_at[entry["id"]] = wall_due


def bodies_for(env: LedgerEnv, signers: list[InteractionSigner], count: int) -> list[str]:
    # Priced once: the tariff does not change during the run, and asking the chain per item is most
    # of the setup's time.
    units = priced_units(env.ledger, Kind.SYNC, 2, 5)
    items = [
        signers[i % len(signers)].sign(env.interaction(Kind.SYNC, signers[i % len(signers)].address, units=units))
        for i in range(count)
    ]
    return [
        "[" + ",".join(line.strip() for line in iter_json_lines(items[s : s + ITEMS_PER_POST])) + "]"
        for s in range(0, len(items), ITEMS_PER_POST)
    ]


def run_clients(clients: int, bodies: list[str], url: str, phase: Phase, interval: float | None) -> float:
    """Post `bodies` from `clients` threads; back to back if `interval` is None, else client k posts its
    j-th body at start + (j * clients + k) * interval. Returns the seconds it took."""
    started = time.perf_counter()

    def client(index: int) -> None:
        session = requests.Session()
        for j, body in enumerate(bodies[index::clients]):
            due = time.perf_counter()
            if interval is not None:
                due = started + (j * clients + index) * interval
                time.sleep(max(0.0, due - time.perf_counter()))
            phase.post(session, url, body, due)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def wait_drained(url: str) -> None:
    while requests.get(url + "/healthz").json()["outbox_depth"]:
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def recorded_delays(outbox: Path, phase: Phase) -> list[float]:
    db = sqlite3.connect(outbox)
    try:
        rows = db.execute("SELECT id, updated_at, status FROM items").fetchall()
    finally:
        db.close()
    wrong = {status for item_id, _, status in rows if item_id in phase.posted_at and status != "recorded"}
    if wrong:
        raise SystemExit(f"items ended {sorted(wrong)}, not recorded: the benchmark's figures would be wrong")
    return [updated - phase.posted_at[item_id] for item_id, updated, _ in rows if item_id in phase.posted_at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="interactions in the saturation phase")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--paced-rate", type=int, default=3_000, help="offered items/s in the paced phase (0: skip)")
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="merge the figures into this JSON file")
    args = parser.parse_args()
    paced_count = int(args.paced_rate * args.paced_seconds) // ITEMS_PER_POST * ITEMS_PER_POST
    workspace = Workspace.locate()
    anvil, rpc_url = start_anvil(workspace)
    server: Server | None = None
    try:
        env = deploy_env(connect(rpc_url), compile_ledger(workspace), institutions=8, credit_line=10**9)
        root = Path(tempfile.mkdtemp(prefix="medmeter-service-bench-"))
        server = Server(root, rpc_url, make_workspace(root, env), extra=("--batch-size", str(MAX_BATCH_SIZE)))
        server.start()
        assert server.process is not None
        post_url = server.url + "/v1/interactions"
        signers = [InteractionSigner(env.ledger.domain, a) for a in env.institutions]
        print(f"signing {args.count + paced_count:,} interactions …", flush=True)
        saturation_bodies = bodies_for(env, signers, args.count)
        paced_bodies = bodies_for(env, signers, paced_count)
        outbox = root / ".medmeter" / "service" / "outbox.sqlite3"

        print(f"saturation: {args.count:,} interactions from {args.clients} clients, back to back …", flush=True)
        saturation = Phase()
        cpu_before = cpu_seconds(server.process.pid)
        started = time.perf_counter()
        acked = run_clients(args.clients, saturation_bodies, post_url, saturation, None)
        wait_drained(server.url)
        recorded = time.perf_counter() - started
        cpu_per_item = (cpu_seconds(server.process.pid) - cpu_before) / args.count
        to_recorded = recorded_delays(outbox, saturation)
        figures: dict[str, float | int] = {
            "service_interactions": args.count,
            "service_clients": args.clients,
            "service_acknowledged_per_second": round(args.count / acked, 1),
            "service_interactions_per_second": round(args.count / recorded, 1),
            "service_ack_p50_ms": round(statistics.median(saturation.ack_latency) * 1000, 1),
            "service_ack_p99_ms": round(percentile(saturation.ack_latency, 0.99) * 1000, 1),
            "service_recorded_p50_s": round(statistics.median(to_recorded), 2),
            "service_recorded_p99_s": round(percentile(to_recorded, 0.99), 2),
            "service_cpu_ms_per_interaction": round(cpu_per_item * 1000, 3),
        }
        if paced_count:
            interval = ITEMS_PER_POST / args.paced_rate
            print(f"paced: {paced_count:,} interactions offered at {args.paced_rate:,}/s …", flush=True)
            paced = Phase()
            started = time.perf_counter()
            run_clients(args.clients, paced_bodies, post_url, paced, interval)
            wait_drained(server.url)
            paced_recorded = time.perf_counter() - started
            paced_to_recorded = recorded_delays(outbox, paced)
            figures |= {
                "service_paced_offered_per_second": args.paced_rate,
                "service_paced_interactions": paced_count,
                "service_paced_recorded_per_second": round(paced_count / paced_recorded, 1),
                "service_paced_ack_p50_ms": round(statistics.median(paced.ack_latency) * 1000, 1),
                "service_paced_ack_p99_ms": round(percentile(paced.ack_latency, 0.99) * 1000, 1),
                "service_paced_recorded_p50_s": round(statistics.median(paced_to_recorded), 2),
                "service_paced_recorded_p99_s": round(percentile(paced_to_recorded, 0.99), 2),
            }
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                figures["service_peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        print(json.dumps(figures, indent=2))
        if args.out:
            results = json.loads(args.out.read_text()) if args.out.is_file() else {}
            results.update(figures)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if server is not None and server.process is not None:
            server.stop()
        anvil.kill()


if __name__ == "__main__":
    main()
