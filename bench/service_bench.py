"""Benchmark of the platform service: several clients POST batches of 100 signed interactions over
loopback; acknowledged/s, recorded/s, p50/p99 POST→ack and POST→recorded, peak RSS of the service.

    .venv/bin/python -m bench.service_bench --count 100000 --clients 4 [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from tests.conftest import start_anvil
from tests.service.conftest import Server, make_workspace
from tests.support.chains import deploy_env

from medmeter.chain.rpc import connect
from medmeter.contract.facts import MAX_BATCH_SIZE
from medmeter.signing.interaction import InteractionSigner, Kind, iter_json_lines
from medmeter.toolchain.compiler import compile_ledger
from medmeter.workspace import Workspace


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workspace = Workspace.locate()
    anvil, url = start_anvil(workspace)
    try:
        w3 = connect(url)
        env = deploy_env(w3, compile_ledger(workspace), institutions=8, credit_line=10**9)
        root = Path(tempfile.mkdtemp(prefix="medmeter-service-bench-"))
        server = Server(root, url, make_workspace(root, env), extra=("--batch-size", str(MAX_BATCH_SIZE)))
        server.start()
        signers = [InteractionSigner(env.ledger.domain, a) for a in env.institutions]
        items = [
            signers[i % len(signers)].sign(env.interaction(Kind.SYNC, signers[i % len(signers)].address))
            for i in range(args.count)
        ]
        bodies = [
            "[" + ",".join(line.strip() for line in iter_json_lines(items[s : s + 100])) + "]"
            for s in range(0, len(items), 100)
        ]
        ack_latency: list[float] = []
        posted_at: dict[str, float] = {}
        lock = threading.Lock()

        def client(index: int) -> None:
            session = requests.Session()
            for body in bodies[index :: args.clients]:
                started = time.perf_counter()
                answer = session.post(
                    server.url + "/v1/interactions", data=body, headers={"content-type": "application/json"}
                )
                elapsed = time.perf_counter() - started
                assert answer.status_code == 202, answer.text
                with lock:
                    ack_latency.append(elapsed)
                    for entry in answer.json()["items"]:
                        posted_at[entry["id"]] = time.time() - elapsed

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        acked = time.perf_counter() - started
        while True:
            health = requests.get(server.url + "/healthz").json()
            if health["outbox_depth"] == 0:
                break
            time.sleep(0.2)
        recorded = time.perf_counter() - started
        import sqlite3

        db = sqlite3.connect(root / ".medmeter" / "service" / "outbox.sqlite3")
        rows = db.execute("SELECT id, updated_at, status FROM items").fetchall()
        assert {r[2] for r in rows} == {"recorded"}, {r[2] for r in rows}
        to_recorded = [updated - posted_at[item_id] for item_id, updated, _ in rows]
        rss_kb = 0
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmHWM:"):
                rss_kb = int(line.split()[1])
        server.stop()
        figures = {
            "service_interactions": args.count,
            "service_clients": args.clients,
            "service_acknowledged_per_second": round(args.count / acked, 1),
            "service_interactions_per_second": round(args.count / recorded, 1),
            "service_ack_p50_ms": round(statistics.median(ack_latency) * 1000, 1),
            "service_ack_p99_ms": round(percentile(ack_latency, 0.99) * 1000, 1),
            "service_recorded_p50_s": round(statistics.median(to_recorded), 2),
            "service_recorded_p99_s": round(percentile(to_recorded, 0.99), 2),
            "service_peak_rss_mb": round(rss_kb / 1024, 1),
        }
        print(json.dumps(figures, indent=2))
        if args.out:
            results = json.loads(args.out.read_text()) if args.out.is_file() else {}
            results.update(figures)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        anvil.kill()


if __name__ == "__main__":
    main()
