"""Faults: the devnet killed mid-relay, restarted, unreachable, slow or failing; through the real CLI."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from medmeter.chain.rpc import BACKOFF_SECONDS, RETRIES
from tests.support.cli import (
    CliWorkspace,
    assert_clean_error,
    craft,
    deployed_workspace,
    make_workspace,
    pid_alive,
    poll,
    read_items,
    register,
    snapshot,
    write_items,
)

RELAY_SIZE = 2_000
BATCH_SIZE = 50


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path_factory.mktemp("faults") / "ws", [("clinic-a", "FLT-A", 1_000), ("clinic-b", "FLT-B", 1_000)]
    )
    yield cli
    cli.close()


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path / "ws",
        [("clinic-a", "KIL-A", 5_000), ("clinic-b", "KIL-B", 5_000), ("clinic-c", "KIL-C", 5_000)],
    )
    yield cli
    cli.close()


def nonce_keys(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["institution"], e["nonce"]) for e in events]


# ---------------------------------------------------------------------------------- the devnet dies


def test_devnet_killed_mid_relay_then_a_rerun_records_everything_exactly_once(killable: CliWorkspace) -> None:
    # A restart first, so the devnet has a known-good copy of its state that includes the deployment
    # (the copy is what `devnet up` falls back on if a kill lands in the middle of a state write).
    killable.run("devnet", "down")
    killable.up()
    traffic = killable.root / "traffic.jsonl"
    killable.run("simulate", "--count", RELAY_SIZE, "--seed", 99, "-o", traffic)
    items = read_items(traffic)
    expected_keys = {(i["institution"], i["nonce"]) for i in items}
    assert len(items) == len(expected_keys) == RELAY_SIZE
    assert {i["kind"] for i in items} == {"sync", "fetch", "exchange"}

    anvil_pid = int(killable.devnet_info()["pid"])
    state = killable.state_dir / "devnet" / "state.json"
    w3 = killable.w3()
    # The test mines, so that the kill lands mid-way whatever the relay's speed: some batches mined
    # and persisted, the next ones sent but never mined.
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]

    def pending() -> int:
        return int(w3.provider.make_request("txpool_status", [])["result"]["pending"], 16)  # type: ignore[arg-type]

    with (killable.root / "relay1.out").open("w") as out, (killable.root / "relay1.err").open("w") as err:
        relay = killable.popen("relay", traffic, "--batch-size", BATCH_SIZE, stdout=out, stderr=err)
        try:
            for _ in range(3):
                poll(lambda: pending() > 0 or relay.poll() is not None, 120, "the relay to send a batch")
                assert relay.poll() is None, "the relay stopped early"
                w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            mined = nonce_keys(killable.recorded(w3))
            poll(lambda: pending() > 0, 120, "the relay to send batches that will never be mined")
            dumps: list[int] = [state.stat().st_mtime_ns]
            # Two state writes after the last block: the second one started after it, so it holds it.
            for _ in range(2):
                poll(lambda: state.stat().st_mtime_ns != dumps[-1], 60, "anvil to write its state")
                dumps.append(state.stat().st_mtime_ns)
            assert relay.poll() is None
            os.kill(anvil_pid, signal.SIGKILL)
            relay.wait(timeout=300)
        finally:
            if relay.poll() is None:
                relay.kill()
    stdout = (killable.root / "relay1.out").read_text()
    stderr = (killable.root / "relay1.err").read_text()
    assert relay.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    [error] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "lost the connection to http://127.0.0.1:" in error and "medmeter relay` skips" in error, error
    assert not pid_alive(anvil_pid)
    assert 0 < len(mined) < RELAY_SIZE

    restarted = killable.run("devnet", "up")
    assert "started anvil" in restarted.stdout
    survived = nonce_keys(killable.recorded())
    assert survived == mined, (
        restarted.describe() + f" head {killable.w3().eth.block_number}"
    )  # what was mined and persisted is there; the unmined batches are gone

    rerun = killable.run("relay", traffic, "--batch-size", BATCH_SIZE)
    assert f"recorded {RELAY_SIZE - len(mined)}, already recorded {len(mined)}, refused 0" in rerun.stdout

    recorded = nonce_keys(killable.recorded())
    assert len(recorded) == RELAY_SIZE
    assert set(recorded) == expected_keys  # each (institution, nonce) of the input exactly once
    again = killable.run("relay", traffic, "--batch-size", BATCH_SIZE)
    assert f"recorded 0, already recorded {RELAY_SIZE}, refused 0" in again.stdout
    rows = json.loads(killable.run("balances", "--json").stdout)["institutions"]  # exits 1 unless they reconcile
    assert sum(sum(r["counts"].values()) for r in rows) == RELAY_SIZE


def test_a_state_file_damaged_by_a_kill_is_restored_from_the_last_start(ws: CliWorkspace) -> None:
    register(ws, "clinic-d", "KIL-D", "Late Clinic")
    institutions = ws.run("institution", "list").stdout
    ws.run("devnet", "down")
    ws.up()  # takes the known-good copy: it holds clinic-d
    pid = int(ws.devnet_info()["pid"])
    register(ws, "clinic-e", "KIL-E", "Lost Clinic")
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not pid_alive(pid), 30, "anvil to die")
    state = ws.state_dir / "devnet" / "state.json"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # as a kill during anvil's write leaves it

    restored = ws.run("devnet", "up")
    assert "started anvil" in restored.stdout
    [warning] = [line for line in restored.stderr.splitlines() if line.startswith("warning: ")]
    assert "the devnet state was damaged" in warning and "restored the copy from the last start" in warning
    assert list(state.parent.glob("state.damaged-*.json")), "the damaged file is kept for inspection"
    assert ws.run("institution", "list").stdout == institutions  # clinic-d kept, clinic-e lost
    assert "KIL-E" not in institutions


def test_devnet_stopped_and_started_keeps_balances_events_and_periods(ws: CliWorkspace) -> None:
    b = ws.account("clinic-b").address
    traffic = [craft(ws, "clinic-a", "sync", nonce=50_000 + i, records=3 + i) for i in range(6)]
    traffic += [craft(ws, "clinic-b", "exchange", nonce=50_000, records=4, counterparty=ws.account("clinic-a").address)]
    traffic += [craft(ws, "clinic-b", "fetch", nonce=50_001, records=2, category=3)]
    path = ws.root / "restart.jsonl"
    write_items(path, traffic)
    ws.run("relay", path)
    ws.w3().provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    ws.run("period", "close")

    def ledger_view() -> tuple[Any, ...]:
        ledger = ws.ledger()
        count = ledger.functions.institutionCount().call()
        institutions = [ledger.functions.institutionAt(i).call() for i in range(count)]
        return (
            ws.run("balances", "--json").stdout,
            ws.run("period", "list").stdout,
            ws.recorded(),
            ledger.functions.totalSupply().call(),
            ledger.functions.debtOf(b).call(),
            [ledger.functions.rateOf(c).call() for c in range(1, 8)],
            ledger.functions.platformFeeBps().call(),
            [ledger.functions.institution(a).call() for a in institutions],
            ledger.functions.currentPeriod().call(),
            # history too: reports and statements read positions at a period's closing block
            ledger.functions.debtOf(b).call(block_identifier=closing_block),
            ledger.functions.balanceOf(b).call(block_identifier=closing_block - 1),
        )

    closing_block = ws.ledger().functions.periodRange(1).call()[1]
    before = ledger_view()
    assert before[4] > 0, "clinic-b should owe units, so that debt is part of what must survive"
    old_pid = int(ws.devnet_info()["pid"])
    ws.run("devnet", "down")
    assert not pid_alive(old_pid)
    ws.up()
    assert int(ws.devnet_info()["pid"]) != old_pid
    assert ledger_view() == before
    assert "recorded 0, already recorded 8, refused 0" in ws.run("relay", path).stdout


# ---------------------------------------------------------------------------------- unreachable endpoints


def test_a_dead_rpc_url_gives_one_clear_sentence(ws: CliWorkspace, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    signed = tmp_path / "signed.jsonl"
    write_items(signed, [craft(ws, "clinic-a", "sync", nonce=60_000)])
    files = snapshot([ws.root / "deployments" / "31337.json", ws.state_dir / "nonces.json"])
    for args in (("relay", signed),):
        result = ws.run("--rpc-url", dead, *args, expect=1)
        assert_clean_error(result, f"cannot reach the JSON-RPC endpoint {dead} after {RETRIES} attempts")
    assert_clean_error(ws.run("--rpc-url", "not-a-url", "period", "list", expect=1), "cannot reach", "not-a-url")
    assert snapshot(files) == files


# ---------------------------------------------------------------------------------- a misbehaving endpoint


class FlakyProxy:
    """A JSON-RPC proxy on 127.0.0.1 in front of a real node; `plan(n, method)` picks what the
    n-th request (from 0) gets: "forward", "http503", "reset", "rpc-error" or "hang"."""

    def __init__(self, upstream: str, plan: Callable[[int, str], str]) -> None:
        self.upstream = upstream
        self.plan = plan
        self.log: list[tuple[float, str, str]] = []  # (monotonic time, method, action)
        self.release = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                method = request["method"] if isinstance(request, dict) else "batch"
                with proxy._lock:
                    action = proxy.plan(len(proxy.log), method)
                    proxy.log.append((time.monotonic(), method, action))
                if action == "hang":
                    proxy.release.wait(120)
                    self.close_connection = True
                    return
                if action == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "http503":
                    self._reply(503, b"upstream busy")
                elif action == "rpc-error":
                    error = {"code": -32603, "message": "upstream database unavailable"}
                    requests_ = request if isinstance(request, list) else [request]
                    answers = [{"jsonrpc": "2.0", "id": r.get("id"), "error": error} for r in requests_]
                    self._reply(200, json.dumps(answers if isinstance(request, list) else answers[0]).encode())
                else:
                    upstream = requests.post(
                        proxy.upstream, data=body, headers={"Content-Type": "application/json"}, timeout=60
                    )
                    self._reply(upstream.status_code, upstream.content)

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def actions(self, method: str | None = None) -> list[str]:
        return [action for _, m, action in self.log if method is None or m == method]

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.log]
        return [b - a for a, b in itertools.pairwise(times)]


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_port_held_by_another_node_is_not_mistaken_for_the_devnet(ws: CliWorkspace, tmp_path: Path) -> None:
    """`devnet up --port P` while another JSON-RPC node answers on P: anvil cannot bind, and the
    answer from the other node must not pass for the new devnet's."""
    other = make_workspace(tmp_path / "other")
    with FlakyProxy(ws.rpc_url(), lambda n, method: "forward") as squatter:
        port = squatter.url.rsplit(":", 1)[1]
        result = other.run("devnet", "up", "--port", port, expect=1)
    assert_clean_error(result, f"anvil could not bind port {port} (in use)")
    assert not other.devnet_json.exists()
    assert "not running" in other.run("devnet", "status", expect=1).stdout


def test_transient_failures_are_retried_with_backoff(ws: CliWorkspace) -> None:
    failures = ["http503", "reset", "http503"]
    plan = lambda n, method: failures[n] if n < len(failures) else "forward"  # noqa: E731
    with FlakyProxy(ws.rpc_url(), plan) as proxy:
        result = ws.run("--rpc-url", proxy.url, "period", "list")
    assert result.lines[-1].startswith("period ") and result.lines[-1].endswith("(open)")
    assert proxy.actions()[:4] == [*failures, "forward"]
    assert proxy.actions("eth_chainId")[:4] == [*failures, "forward"]  # the same request, four times
    for attempt, gap in enumerate(proxy.gaps()[:3]):
        assert gap >= BACKOFF_SECONDS * 2**attempt * 0.9, proxy.gaps()  # sleeps 0.25, 0.5, 1 s between tries


def test_an_endpoint_that_keeps_failing_gives_up_after_the_retries(ws: CliWorkspace) -> None:
    with FlakyProxy(ws.rpc_url(), lambda n, method: "http503") as proxy:
        result = ws.run("--rpc-url", proxy.url, "balances", expect=1)
    assert_clean_error(result, f"after {RETRIES} attempts", "HTTP 503")
    assert proxy.actions() == ["http503"] * RETRIES
    assert all(gap >= BACKOFF_SECONDS * 0.9 for gap in proxy.gaps())


def test_an_endpoint_that_hangs_times_out_and_gives_up(ws: CliWorkspace) -> None:
    with FlakyProxy(ws.rpc_url(), lambda n, method: "hang") as proxy:
        result = ws.run("--rpc-url", proxy.url, "period", "list", expect=1, env={"MEDMETER_RPC_TIMEOUT": "0.3"})
    assert_clean_error(result, f"after {RETRIES} attempts", "no answer within 0.3 s")
    assert proxy.actions() == ["hang"] * RETRIES


def test_json_rpc_errors_give_one_clear_sentence(ws: CliWorkspace) -> None:
    with FlakyProxy(ws.rpc_url(), lambda n, method: "rpc-error") as proxy:
        result = ws.run("--rpc-url", proxy.url, "period", "list", expect=1)
    assert_clean_error(result, "answered eth_chainId with an error (-32603 upstream database unavailable)")

    # The node answers the probe, then fails the reads: the sentence names the error, nothing is written.
    out = ws.root / "never-written.jsonl"
    nonces = ws.state_dir / "nonces.json"
    files = snapshot([out, nonces])
    plan = lambda n, method: "rpc-error" if method == "eth_call" else "forward"  # noqa: E731
    with FlakyProxy(ws.rpc_url(), plan) as proxy:
        result = ws.run("--rpc-url", proxy.url, "simulate", "--count", 5, "-o", out, expect=1)
    assert_clean_error(result, "the node answered a request with an error (-32603 upstream database unavailable)")
    assert "rpc-error" in proxy.actions("eth_call")
    assert snapshot(files) == files


def test_a_connection_lost_mid_command_leaves_nothing_half_written(ws: CliWorkspace) -> None:
    deployment = ws.root / "deployments" / "31337.json"
    files = snapshot([deployment])
    receipts = "eth_getTransactionReceipt"
    plan = lambda n, method: "http503" if method == receipts else "forward"  # noqa: E731
    with FlakyProxy(ws.rpc_url(), plan) as proxy:
        result = ws.run("--rpc-url", proxy.url, "deploy", "--new", expect=1)
    assert_clean_error(result, "lost the connection to", f"after {RETRIES} attempts (HTTP 503")
    assert proxy.actions("eth_sendRawTransaction") == ["forward"]  # sent and mined; only the wait failed
    assert proxy.actions(receipts) == ["http503"] * RETRIES
    assert snapshot(files) == files  # the deployment file still names the ledger that was there
    assert "period " in ws.run("period", "list").stdout


def test_the_proxy_itself_forwards_faithfully(ws: CliWorkspace) -> None:
    """Guard for the tests above: with nothing injected, every command works through the proxy."""
    direct = ws.run("tariff", "show").stdout
    with FlakyProxy(ws.rpc_url(), lambda n, method: "forward") as proxy:
        assert ws.run("--rpc-url", proxy.url, "tariff", "show").stdout == direct
    assert set(proxy.actions()) == {"forward"} and len(proxy.log) >= 2
