"""kill -9 of the service at random points of relaying, and the node stopped under it: every
acknowledged interaction ends recorded exactly once, checked against the chain's own events."""

from __future__ import annotations

import random
import signal
import time

from medmeter.chain.rpc import wait_until
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC
from medmeter.relay.engine import decode_events
from medmeter.signing.interaction import InteractionSigner, Kind
from tests.service.conftest import ServiceEnv


def chain_events(service_env: ServiceEnv) -> list:
    ledger = service_env.env.ledger
    response = ledger.w3.provider.make_request(
        "eth_getLogs",
        [{"address": ledger.address, "topics": [INTERACTION_RECORDED_TOPIC], "fromBlock": "0x0", "toBlock": "latest"}],
    )
    return decode_events(response["result"])


def test_kill_9_at_random_points_loses_nothing_and_records_nothing_twice(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    rng = random.Random(11)
    signers = {a.address: InteractionSigner(env.ledger.domain, a) for a in env.institutions}
    acknowledged: dict[tuple[str, int], str] = {}
    for _round in range(4):
        items = [signers[a.address].sign(env.interaction(Kind.SYNC, a)) for a in env.institutions for _ in range(400)]
        for start in range(0, len(items), 200):
            answer = server.post(items[start : start + 200])
            assert answer.status_code == 202
            for item, entry in zip(items[start : start + 200], answer.json()["items"], strict=True):
                assert entry["status"] == "queued"
                acknowledged[(item.interaction.institution, item.interaction.nonce)] = entry["id"]
        time.sleep(rng.uniform(0.05, 1.0))  # somewhere in the middle of relaying
        server.kill()
        server.start()
    ids = list(acknowledged.values())
    finals = server.wait_final(ids, timeout=300)
    assert {f["status"] for f in finals.values()} == {"recorded"}
    events = chain_events(service_env)
    keys = [(e.institution, e.nonce) for e in events]
    assert len(keys) == len(set(keys)), "an interaction was recorded twice"
    assert set(keys) == set(acknowledged), "an acknowledged interaction is missing on chain"
    by_key = {(e.institution, e.nonce): e for e in events}
    for key, item_id in acknowledged.items():
        assert finals[item_id]["transaction"] == by_key[key].tx_hash


def test_node_stopped_and_restarted_under_the_service(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    server.stop()
    server.env_extra = {"MEDMETER_RPC_TIMEOUT": "1"}
    server.start()
    clinic = env.institutions[0]
    items = [env.signed(Kind.SYNC, clinic) for _ in range(5)]
    ids = [e["id"] for e in server.post(items[:1]).json()["items"]]
    server.wait_final(ids)  # the registry is cached now
    service_env.anvil.send_signal(signal.SIGSTOP)  # the node stops answering, its state intact
    try:
        answer = server.post(items[1:])
        assert answer.status_code == 202, answer.text
        ids = [e["id"] for e in answer.json()["items"]]
        assert [e["status"] for e in answer.json()["items"]] == ["queued"] * 4
        time.sleep(3)
        health = server.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
        assert {server.get(f"/v1/interactions/{i}").json()["status"] for i in ids} <= {"queued", "sent"}
    finally:
        service_env.anvil.send_signal(signal.SIGCONT)
    assert {f["status"] for f in server.wait_final(ids, timeout=120).values()} == {"recorded"}
    assert wait_until(lambda: server.get("/healthz").status_code == 200, 30)


def test_a_paused_ledger_holds_acknowledged_items_queued_until_it_is_unpaused(service_env: ServiceEnv) -> None:
    """A pause refuses the relayer, not the items: they must not end `refused` (the clinic's client would
    drop them), and must be recorded exactly once after the unpause."""
    env, server = service_env.env, service_env.server
    clinic = env.institutions[0]
    first = [e["id"] for e in server.post([env.signed(Kind.SYNC, clinic)]).json()["items"]]
    server.wait_final(first)
    env.ledger.pause()
    items = [env.signed(Kind.SYNC, clinic) for _ in range(5)]
    answer = server.post(items)
    assert [e["status"] for e in answer.json()["items"]] == ["queued"] * 5, answer.text
    ids = [e["id"] for e in answer.json()["items"]]
    assert wait_until(lambda: server.get("/healthz").json().get("ledger_refusal") is not None, 30)
    health = server.get("/healthz")
    assert health.status_code == 503 and "paused" in health.json()["ledger_refusal"], health.text
    assert {server.get(f"/v1/interactions/{i}").json()["status"] for i in ids} == {"queued"}
    env.ledger.unpause()
    finals = server.wait_final(ids, timeout=60)
    assert {f["status"] for f in finals.values()} == {"recorded"}, finals
    nonces = {i.interaction.nonce for i in items}
    recorded = [e for e in chain_events(service_env) if e.institution == clinic.address and e.nonce in nonces]
    assert sorted(e.nonce for e in recorded) == sorted(nonces)  # each exactly once
    assert {finals[i]["transaction"] for i in ids} == {e.tx_hash for e in recorded}
    assert wait_until(lambda: server.get("/healthz").status_code == 200, 30)
    assert server.get("/healthz").json()["ledger_refusal"] is None
