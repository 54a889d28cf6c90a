"""The platform service through the real console script: `medmeter serve --detach`, `serve status`,
`serve stop`, the institution side's `submit` and `status`, and the service's settings (flags over
MEDMETER_SERVICE_* over medmeter.toml's [service] table).

Real processes against a real anvil devnet with a ledger deployed, a tariff and two institutions
registered through the CLI (tests/support/cli.py); the service keeps its outbox in SQLite under the
workspace. Every detached service is stopped by the `services` fixture, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import requests
from web3 import Web3

from medmeter.service.server import ENV_PREFIX, ServiceConfig
from medmeter.signing.interaction import digest
from medmeter.toolchain.devnet import free_port
from tests.service.conftest import Server
from tests.support.cli import (
    CliWorkspace,
    Result,
    assert_clean_error,
    craft,
    deployed_workspace,
    parsed,
    pid_alive,
    poll,
    read_items,
    write_items,
)

CHAIN_ID = 31337
STARTED = re.compile(r"^started the service \(pid (\d+)\), log in \.medmeter/service/service\.log$")
# Nothing from the caller's environment may choose the service's settings or the gateway here.
SERVICE_ENV = [ENV_PREFIX + f.name.upper() for f in fields(ServiceConfig)] + ["MEDMETER_GATEWAY"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    """One devnet for the module: ledger deployed, default tariff, clinic-a and clinic-b registered."""
    cli = deployed_workspace(
        tmp_path_factory.mktemp("service-cli") / "ws", [("clinic-a", "SVC-A", 1_000), ("clinic-b", "SVC-B", 1_000)]
    )
    yield cli
    cli.close()


@pytest.fixture
def services(ws: CliWorkspace) -> Iterator[list[int]]:
    """Tests append the pid of every service they start; afterwards `serve stop` runs and any of them
    still alive is killed, and medmeter.toml is removed, so each test starts with no service."""
    pids: list[int] = []
    yield pids
    (ws.root / "medmeter.toml").unlink(missing_ok=True)
    info = ws.state_dir / "service" / "service.json"
    if info.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pids.append(int(json.loads(info.read_text())["pid"]))
    try:
        run(ws, "serve", "stop", expect=None)
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        info.unlink(missing_ok=True)


def run(ws: CliWorkspace, *args: object, expect: int | None = 0, **env: str) -> Result:
    """`medmeter ARGS` in the workspace, with only the service variables given here set."""
    overrides: dict[str, str | None] = {name: None for name in SERVICE_ENV}
    overrides |= env
    return ws.run(*args, expect=expect, env=overrides)


def started_pid(result: Result) -> int:
    match = STARTED.match(result.lines[0]) if result.lines else None
    assert match, result.describe()
    return int(match.group(1))


def healthz(url: str) -> requests.Response | None:
    try:
        return requests.get(url + "/healthz", timeout=10)
    except requests.RequestException:
        return None


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(0)
        if port not in ports:
            ports.append(port)
    return ports


def service_info(ws: CliWorkspace) -> dict[str, Any]:
    return json.loads((ws.state_dir / "service" / "service.json").read_text())


def gateway(ws: CliWorkspace, port: int) -> Server:
    """tests/service's Server, for its GET and wait_final on a service the CLI started (never .start())."""
    return Server(ws.root, ws.rpc_url(), ws.root / "deployments" / f"{CHAIN_ID}.json", port=port)


def item_id(item: dict[str, Any]) -> str:
    signed = parsed(item)
    return "0x" + digest(signed.interaction, signed.domain).hex()


def recorded_events(ws: CliWorkspace) -> dict[tuple[str, int], list[str]]:
    """(institution, nonce) -> the transaction of every InteractionRecorded event for it, from the chain."""
    ledger = ws.ledger()
    events: dict[tuple[str, int], list[str]] = {}
    for log in ledger.events.InteractionRecorded().get_logs(from_block=ws.deployment()["block"]):
        key = (Web3.to_checksum_address(log["args"]["institution"]), int(log["args"]["nonce"]))
        events.setdefault(key, []).append(Web3.to_hex(log["transactionHash"]).lower())
    return events


def key_of(item: dict[str, Any]) -> tuple[str, int]:
    return Web3.to_checksum_address(item["institution"]), int(item["nonce"])


# ---------------------------------------------------------------------------------- serve --detach / status / stop


def test_detach_status_reuse_stop(ws: CliWorkspace, services: list[int]) -> None:
    not_running = run(ws, "serve", "status", expect=1)
    assert not_running.lines == ["the service is not running: start it with `medmeter serve --detach`"]

    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    started = run(ws, "serve", "--detach", "--port", port)
    pid = started_pid(started)
    services.append(pid)
    assert started.lines[-1] == url, started.describe()
    assert pid_alive(pid)
    health = healthz(url)
    assert health is not None and health.status_code == 200, health and health.text
    answer = health.json()
    assert answer["status"] == "ok" and answer["node_reachable"] and answer["relayer_alive"], answer
    assert answer["chain_id"] == CHAIN_ID
    assert answer["ledger"].lower() == ws.deployment()["address"].lower()
    assert service_info(ws)["pid"] == pid and service_info(ws)["url"] == url

    status = run(ws, "serve", "status")
    assert status.lines == [f"running: pid {pid}, ok, outbox depth 0", url], status.describe()

    reused = run(ws, "serve", "--detach", "--port", port)
    assert reused.lines == [f"reusing the service (pid {pid})", url], reused.describe()
    assert service_info(ws)["pid"] == pid

    stopped = run(ws, "serve", "stop")
    assert stopped.lines == [f"stopped the service (pid {pid})"], stopped.describe()
    assert not pid_alive(pid)
    assert healthz(url) is None
    assert not (ws.state_dir / "service" / "service.json").exists()

    assert run(ws, "serve", "stop").lines == ["the service was not running"]
    assert run(ws, "serve", "status", expect=1).lines == not_running.lines


def test_detach_refuses_a_port_another_program_listens_on(
    ws: CliWorkspace, services: list[int], tmp_path: Path
) -> None:
    """Any HTTP server on the port answers GET /healthz; `--detach` used to take that for the service's
    answer, say "started" and exit 0 while the service failed to bind."""
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: healthz(url) is not None, 20, "python -m http.server to answer")
        refused = run(ws, "serve", "--detach", "--port", port, expect=None)
        if refused.lines and (wrongly_started := STARTED.match(refused.lines[0])):
            services.append(int(wrongly_started.group(1)))  # the teardown stops it even if it binds later
        assert_clean_error(refused, f"127.0.0.1:{port} is already in use", "--port", exit_code=1)
        assert refused.stdout == "", refused.describe()
        assert run(ws, "serve", "status", expect=1).lines[0].startswith("the service is not running")

        # `status --gateway` aimed at that program says so, not that the JSON-RPC node is down.
        wrong = run(ws, "status", "--gateway", url, "0x" + "ab" * 32, expect=1)
        line = assert_clean_error(wrong, url, "is not the medmeter service's API", "--gateway", exit_code=1)
        assert "JSON-RPC" not in line
    finally:
        other.kill()
        other.wait(10)


def test_status_when_the_recorded_service_does_not_answer(ws: CliWorkspace, services: list[int]) -> None:
    """service.json names a live pid but nothing answers on its URL (the state while a detached service
    starts: it writes service.json before it binds). It used to blame the JSON-RPC node."""
    sleeper = subprocess.Popen(["sleep", "120"])
    info = ws.state_dir / "service" / "service.json"
    info.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port(0)}"
    try:
        info.write_text(json.dumps({"pid": sleeper.pid, "url": url}))
        result = run(ws, "serve", "status", expect=1)
        line = assert_clean_error(result, f"pid {sleeper.pid}", f"does not answer on {url}", exit_code=1)
        assert "node" not in line and "JSON-RPC" not in line
    finally:
        info.unlink(missing_ok=True)
        sleeper.kill()
        sleeper.wait(10)


# ---------------------------------------------------------------------------------- submit / status


def test_submit_records_and_an_unreachable_gateway_keeps_items_until_the_next_submit(
    ws: CliWorkspace, services: list[int]
) -> None:
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    services.append(started_pid(run(ws, "serve", "--detach", "--port", port)))
    service = gateway(ws, port)
    outbox = ws.state_dir / "submit-outbox.jsonl"  # submit's default --outbox, from the workspace root

    traffic = ws.root / "traffic.jsonl"
    run(ws, "simulate", "--count", 6, "--seed", 11, "-o", traffic)
    items = read_items(traffic)
    ids = [item_id(item) for item in items]
    assert len(set(ids)) == 6 and len({item["institution"] for item in items}) == 2

    sent = run(ws, "submit", "--gateway", url, traffic)
    assert sent.lines == ["queued 6"], sent.describe()
    assert read_items(outbox) == []  # every item was answered for
    finals = service.wait_final(ids, timeout=60)
    assert {answer["status"] for answer in finals.values()} == {"recorded"}, finals
    events = recorded_events(ws)
    w3 = ws.w3()
    for item, identifier in zip(items, ids, strict=True):
        assert events[key_of(item)] == [finals[identifier]["transaction"].lower()], (item, finals[identifier])

    # `medmeter status` prints what the service answers, with the transaction (one of each institution).
    other = next(index for index, item in enumerate(items) if item["institution"] != items[0]["institution"])
    for item, identifier in ((items[0], ids[0]), (items[other], ids[other])):
        shown = json.loads(run(ws, "status", "--gateway", url, identifier).stdout)
        assert shown["id"] == identifier and shown["status"] == "recorded", shown
        assert shown["institution"] == item["institution"] and shown["nonce"] == str(item["nonce"])
        assert events[key_of(item)] == [shown["transaction"].lower()]
        receipt = w3.eth.get_transaction_receipt(shown["transaction"])
        assert receipt["status"] == 1 and receipt["blockNumber"] == shown["block"]

    # The gateway unreachable: one sentence, exit 1, and the items wait in the local outbox.
    offline = [craft(ws, "clinic-a", "sync", nonce=50_000 + i, records=1 + i) for i in range(3)]
    offline_ids = [item_id(item) for item in offline]
    offline_file = ws.root / "offline.jsonl"
    write_items(offline_file, offline)
    closed = f"http://127.0.0.1:{free_port(0)}"
    began = time.monotonic()
    failed = run(ws, "submit", "--gateway", closed, offline_file, expect=1)
    elapsed = time.monotonic() - began
    assert_clean_error(failed, f"the gateway {closed} did not take", "kept in the local outbox", exit_code=1)
    assert failed.stdout == ""
    # Six attempts wait 0.5+1+2+4+8 s between them; it used to sleep another 16 s after the last one.
    assert elapsed < 28, f"{elapsed:.1f} s"
    assert read_items(outbox) == offline
    ledger = ws.ledger()
    address = ws.account("clinic-a").address
    assert [ledger.functions.isNonceUsed(address, 50_000 + i).call() for i in range(3)] == [False] * 3
    assert all(service.get(f"/v1/interactions/{i}").status_code == 404 for i in offline_ids)

    # A hung gateway (it takes the connection and never answers) is unreachable too, after --timeout.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hung:
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        began = time.monotonic()
        stalled = run(ws, "submit", "--gateway", hung_url, "--timeout", 1, "--retries", 1, expect=1)
        elapsed = time.monotonic() - began
    assert_clean_error(stalled, f"the gateway {hung_url} did not take", "ReadTimeout", "local outbox", exit_code=1)
    assert elapsed < 15, f"{elapsed:.1f} s"  # two attempts of 1 s and one wait of 0.5 s, plus start-up
    assert read_items(outbox) == offline

    # The gateway answering: `submit` without FILES (as the sentence above advises) sends the outbox.
    flushed = run(ws, "submit", "--gateway", url)
    assert flushed.lines == ["queued 3"], flushed.describe()
    assert read_items(outbox) == []
    finals = service.wait_final(offline_ids, timeout=60)
    assert {answer["status"] for answer in finals.values()} == {"recorded"}, finals

    # Sending the file again changes nothing: the service knows them; each is on chain exactly once.
    again = run(ws, "submit", "--gateway", url, offline_file)
    assert again.lines == ["duplicate 3"], again.describe()
    assert run(ws, "submit", "--gateway", url).lines == ["nothing to send"]
    events = recorded_events(ws)
    for item, identifier in zip(offline, offline_ids, strict=True):
        assert events[key_of(item)] == [finals[identifier]["transaction"].lower()]
    for item in items:
        assert len(events[key_of(item)]) == 1


# ---------------------------------------------------------------------------------- settings


def test_settings_flag_over_environment_over_medmeter_toml(ws: CliWorkspace, services: list[int]) -> None:
    toml_port, env_port, flag_port = distinct_free_ports(3)
    (ws.root / "medmeter.toml").write_text(f"[service]\nport = {toml_port}\nbatch_size = 7\n")

    def started_on(result: Result, port: int, batch_size: int) -> int:
        pid = started_pid(result)
        services.append(pid)
        url = f"http://127.0.0.1:{port}"
        assert result.lines[-1] == url, result.describe()
        health = healthz(url)
        assert health is not None and health.json()["status"] == "ok", health and health.text
        info = service_info(ws)  # written by the service from the settings it runs with
        assert (info["pid"], info["port"], info["batch_size"]) == (pid, port, batch_size), info
        return pid

    def stop(pid: int) -> None:
        assert run(ws, "serve", "stop").lines == [f"stopped the service (pid {pid})"]

    # medmeter.toml alone.
    stop(started_on(run(ws, "serve", "--detach"), toml_port, 7))

    # MEDMETER_SERVICE_PORT over the toml's port; the toml's batch_size still holds.
    pid = started_on(run(ws, "serve", "--detach", MEDMETER_SERVICE_PORT=str(env_port)), env_port, 7)
    assert healthz(f"http://127.0.0.1:{toml_port}") is None
    stop(pid)

    # --port over both; MEDMETER_SERVICE_BATCH_SIZE over the toml's batch_size.
    result = run(
        ws, "serve", "--detach", "--port", flag_port,
        MEDMETER_SERVICE_PORT=str(env_port), MEDMETER_SERVICE_BATCH_SIZE="11",
    )  # fmt: skip
    pid = started_on(result, flag_port, 11)
    assert healthz(f"http://127.0.0.1:{env_port}") is None
    assert healthz(f"http://127.0.0.1:{toml_port}") is None
    stop(pid)


@pytest.mark.parametrize(
    ("toml", "env", "args", "fragments"),
    [
        ("[service\nport = 8701\n", {}, ("--detach",), ("medmeter.toml is not valid TOML", "line 1")),
        ("[service\nport = 8701\n", {}, (), ("medmeter.toml is not valid TOML", "fix its [service] table")),
        ("service = 5\n", {}, ("--detach",), ("medmeter.toml: service is not a table", "[service]")),
        ('[service]\nport = "eighty"\n', {}, ("--detach",), ("port='eighty'", "[service] port in medmeter.toml")),
        ("", {"MEDMETER_SERVICE_PORT": "eighty"}, ("--detach",), ("port='eighty'", "$MEDMETER_SERVICE_PORT")),
        # a batch the contract would refuse is refused before anything is acknowledged, wherever it is set
        ("[service]\nbatch_size = 180\n", {}, ("--detach",), ("batch_size=180 is outside 1..140", "medmeter.toml")),
        ("", {"MEDMETER_SERVICE_BATCH_SIZE": "141"}, (), ("batch_size=141 is outside 1..140",)),
        # a TOML value of the wrong kind is named, never a traceback, never truncated or taken as a number
        ("[service]\nport = [8701]\n", {}, ("--detach",), ("port=[8701] is not a whole number", "[service] port")),
        ("[service]\nbatch_size = 50.5\n", {}, ("--detach",), ("batch_size=50.5 is not a whole number",)),
        ("[service]\nconfirmations = true\n", {}, ("--detach",), ("confirmations=True is not a whole number",)),
        ("[service]\nhost = 127\n", {}, ("--detach",), ("host=127 is not text", "quote it")),
        ("", {"MEDMETER_SERVICE_QUEUE_CAP": "-5"}, ("--detach",), ("queue_cap=-5 is outside 1..",)),
        ('[service]\nlog_level = "loud"\n', {}, ("--detach",), ("log_level='loud' is not one of",)),
        # a misspelt setting would otherwise be silently ignored while the operator believes it holds
        ("[service]\nbatchsize = 50\n", {}, ("--detach",), ("unknown [service] setting(s) batchsize", "batch_size")),
    ],
    ids=[
        "not-toml-detach",
        "not-toml-foreground",
        "service-not-a-table",
        "port-not-int",
        "env-port-not-int",
        "toml-batch-over-contract",
        "env-batch-over-contract",
        "toml-list",
        "toml-float",
        "toml-bool",
        "toml-host-number",
        "env-negative",
        "toml-log-level",
        "toml-unknown-key",
    ],
)
def test_bad_settings_are_one_sentence(
    ws: CliWorkspace,
    services: list[int],
    toml: str,
    env: dict[str, str],
    args: tuple[str, ...],
    fragments: tuple[str, ...],
) -> None:
    (ws.root / "medmeter.toml").write_text(toml)
    result = run(ws, "serve", *args, expect=1, **env)
    assert_clean_error(result, *fragments, exit_code=1)
    assert result.stdout == "", result.describe()
    assert not (ws.state_dir / "service" / "service.json").exists()
