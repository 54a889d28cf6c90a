"""Every endpoint and status of the service, against a real server process and anvil."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests
from eth_account import Account

from medmeter.export.events import decode_interaction_logs  # noqa: F401 - the decoder the checks rely on
from medmeter.relay.engine import recorded_events
from medmeter.signing.interaction import Kind, sign_interaction
from tests.service.conftest import ServiceEnv, body


def test_endpoints_statuses_refusals_conflict_and_retries(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    a, b, c = env.institutions
    good = [env.signed(Kind.SYNC, a) for _ in range(3)] + [env.signed(Kind.EXCHANGE, b, counterparty=a.address)]
    stranger = Account.create()
    bad_signer = env.signed(Kind.SYNC, c, signer=stranger)
    expired = env.signed(Kind.SYNC, c, deadline=1)
    unknown_category = env.signed(Kind.SYNC, c, category=999)
    wrong_shape = env.signed(Kind.FETCH, c, counterparty=a.address)
    unregistered = sign_interaction(env.interaction(Kind.SYNC, stranger.address), env.ledger.domain, stranger)
    answer = server.post([*good, bad_signer, expired, unknown_category, wrong_shape, unregistered])
    assert answer.status_code == 202, answer.text
    entries = answer.json()["items"]
    assert [e["status"] for e in entries[:4]] == ["queued"] * 4
    assert [e.get("error") for e in entries[4:]] == [
        "InvalidSigner",
        "InteractionExpired",
        "UnknownCategory",
        "InvalidCounterparty",
        "InstitutionNotRegistered",
    ]
    assert all(e["reason"].endswith(".") for e in entries[4:])

    # A retry of the same body is harmless: every item is a duplicate, nothing is stored twice.
    again = server.post(good).json()["items"]
    assert [e["status"] for e in again] == ["duplicate"] * 4
    assert [e["id"] for e in again] == [e["id"] for e in entries[:4]]
    # A different interaction under a queued nonce is a conflict naming the other one.
    clash = env.signed(Kind.FETCH, a, nonce=good[0].interaction.nonce)
    [conflict] = server.post([clash]).json()["items"]
    assert conflict["status"] == "conflict" and conflict["conflicts_with"] == entries[0]["id"]

    ids = [e["id"] for e in entries[:4]]
    finals = server.wait_final(ids)
    assert {f["status"] for f in finals.values()} == {"recorded"}
    events = recorded_events(env.ledger, {(i.interaction.institution, i.interaction.nonce) for i in good})
    for item, item_id in zip(good, ids, strict=True):
        event = events[(item.interaction.institution, item.interaction.nonce)]
        assert finals[item_id]["transaction"] == event.tx_hash and finals[item_id]["units"] == event.units
        assert finals[item_id]["log_index"] == event.log_index and finals[item_id]["block"] == event.block_number
    # After recording, a different interaction under a used nonce is still a conflict (checked on chain).
    [late] = server.post([env.signed(Kind.FETCH, a, nonce=good[1].interaction.nonce, records=9)]).json()["items"]
    assert late["status"] == "conflict"

    page1 = server.get(f"/v1/institutions/{a.address}/interactions", limit=2).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"] is not None
    page2 = server.get(f"/v1/institutions/{a.address}/interactions", limit=2, cursor=page1["next_cursor"]).json()
    assert [i["id"] for i in page1["items"] + page2["items"]] == ids[:3]
    assert server.get(f"/v1/institutions/{a.address}/interactions", status="queued").json()["items"] == []
    assert server.get(f"/v1/institutions/{a.address}/interactions", status="bogus").status_code == 400

    info = server.get(f"/v1/institutions/{a.address}").json()
    position = env.ledger.position(a.address)
    assert info["registered"] and info["status"] == "active" and info["signer"] == a.address
    assert (info["balance"], info["debt"]) == (position.balance, position.debt) and position.balance > 0
    assert server.get("/v1/institutions/0x1234").status_code == 400
    assert server.get("/v1/interactions/0x" + "00" * 32).status_code == 404

    health = server.get("/healthz")
    assert health.status_code == 200 and health.json()["node_reachable"] and health.json()["outbox_depth"] == 0
    metrics = server.get("/metrics").text
    assert 'medmeter_interactions_refused_total{reason="InvalidSigner"} 1.0' in metrics
    assert "medmeter_interactions_recorded_total 4.0" in metrics
    assert "/v1/interactions" in server.get("/openapi.json").json()["paths"]
    docs = server.get("/docs").text
    assert "cdn." not in docs and "swagger" in docs.lower()


def test_malformed_bodies_get_one_message_per_item(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    good = body([env.signed(Kind.SYNC, env.institutions[0])])[0]
    raw = requests.post(server.url + "/v1/interactions", data=b"{not json", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["errors"][0]["message"]
    extra = {**good, "patient_name": "x"}
    missing = {k: v for k, v in good.items() if k != "signature"}
    answer = server.post([good, extra, missing, 7])
    assert answer.status_code == 422
    messages = {e["index"]: e["message"] for e in answer.json()["errors"]}
    assert set(messages) == {1, 2, 3}
    assert "unknown field(s) patient_name" in messages[1] and "signature" in messages[2]
    # Nothing of a refused body was stored: the good item is still new.
    assert server.post([good]).json()["items"][0]["status"] == "queued"
    huge = requests.post(server.url + "/v1/interactions", data=b"[" + b" " * (40 * 1024 * 1024) + b"]", timeout=60)
    assert huge.status_code == 413


def test_ten_thousand_items_in_one_body_and_sixteen_concurrent_clients(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    from medmeter.signing.interaction import InteractionSigner

    signers = {acct.address: InteractionSigner(env.ledger.domain, acct) for acct in env.institutions}
    big = [signers[a.address].sign(env.interaction(Kind.SYNC, a)) for a in env.institutions for _ in range(3334)]
    answer = server.post(big[:10_000])
    assert answer.status_code == 202
    assert [e["status"] for e in answer.json()["items"]] == ["queued"] * 10_000
    clinic = env.institutions[1]
    extra = [signers[clinic.address].sign(env.interaction(Kind.SYNC, clinic)) for _ in range(16 * 25)]

    def post(chunk: int) -> list[str]:
        return [e["status"] for e in server.post(extra[chunk * 25 : chunk * 25 + 25]).json()["items"]]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(16)))
    assert all(r == ["queued"] * 25 for r in results)
    ids = [e["id"] for e in answer.json()["items"]][-50:]
    assert {a["status"] for a in server.wait_final(ids, timeout=300).values()} == {"recorded"}


def test_backpressure_answers_429_with_retry_after(service_env: ServiceEnv) -> None:
    env, server = service_env.env, service_env.server
    server.stop()
    server.extra = ("--queue-cap", "5")
    server.start()
    clinic = env.institutions[2]
    # Stop relaying by pausing the node's view: items queue up behind a stopped node.
    first = server.post([env.signed(Kind.SYNC, clinic) for _ in range(5)])
    assert first.status_code == 202
    over = server.post([env.signed(Kind.SYNC, clinic) for _ in range(6)])
    if over.status_code == 202:  # the first five were recorded already; six at once still exceed the cap
        raise AssertionError(over.text)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
    assert json.loads(over.text)["errors"][0]["message"].startswith("institution ")
