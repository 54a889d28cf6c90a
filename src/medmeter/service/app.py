"""The platform service's HTTP API (FastAPI on uvicorn).

FastAPI because it gives the OpenAPI schema and the docs page for free (served from local assets by
`fastapi-offline`, nothing from a CDN) and runs on uvicorn's uvloop/httptools. The POST body is read
and validated by hand, not by a pydantic model: 10,000 items in one body validate in a fraction of the
time, and each malformed item gets the same sentence `medmeter relay` gives for a bad JSON line.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from medmeter.chain.ledger import Ledger
from medmeter.errors import InputError, MedmeterError
from medmeter.relay import engine
from medmeter.relay.digests import Digester
from medmeter.service.checks import ChainView, addresses_of, check_item
from medmeter.service.metrics import Metrics
from medmeter.service.outbox import NewItem, Outbox, body_of
from medmeter.service.relayer import Relayer
from medmeter.signing import interaction as signing

API_VERSION = "1"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 20_000
    # Queued or sent items per institution; beyond it a POST is answered 429 with Retry-After.
    queue_cap: int = 50_000
    retry_after_seconds: int = 5


ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A signed interaction, in the fields of the JSON-lines format `medmeter sign` writes.",
    "properties": {name: {} for name in signing.REQUIRED_FIELDS},
    "required": list(signing.REQUIRED_FIELDS),
    "additionalProperties": False,
}
POST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [ITEM_SCHEMA, {"type": "array", "items": ITEM_SCHEMA}]}}},
    }
}


class Service:
    def __init__(self, ledger: Ledger, outbox: Outbox, relayer: Relayer, metrics: Metrics, limits: Limits) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.relayer = relayer
        self.metrics = metrics
        self.limits = limits
        self.digester = Digester()
        self.view = ChainView(ledger)
        self._intake = threading.Lock()  # one intake at a time: the duplicate/conflict checks then hold

    # ------------------------------------------------------------------ POST

    def submit(self, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        started = time.perf_counter()
        try:
            return self._submit(raw)
        finally:
            self.metrics.post_to_ack.observe(time.perf_counter() - started)

    def _submit(self, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            decoded = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return 400, {"errors": [{"index": None, "message": f"the body is not valid JSON: {exc}."}]}, {}
        records = decoded if isinstance(decoded, list) else [decoded]
        if not records:
            return 400, {"errors": [{"index": None, "message": "the body holds no interaction."}]}, {}
        if len(records) > self.limits.max_items:
            return 413, _one(f"{len(records)} items in one body, at most {self.limits.max_items}: split it."), {}
        items: list[signing.SignedInteraction] = []
        errors = []
        allowed = set(signing.REQUIRED_FIELDS)
        for index, record in enumerate(records):
            where = f"item {index}"
            unknown = sorted(set(record) - allowed) if isinstance(record, dict) else []
            if unknown:
                errors.append({"index": index, "message": f"{where}: unknown field(s) {', '.join(unknown)}."})
                continue
            try:
                items.append(signing.parse_signed(record, where))
            except InputError as exc:
                errors.append({"index": index, "message": str(exc)})
        if errors:
            return 422, {"errors": errors}, {}

        digests = [self.digester.digest(item) for item in items]
        ids = ["0x" + d.hex() for d in digests]
        with self._intake:
            try:
                return self._store(records, items, digests, ids)
            except Exception as exc:
                from medmeter.chain.rpc import rpc_failure

                failure = rpc_failure(exc)
                if failure is None:
                    raise
                # Nothing was stored: the client retries (medmeter.client does, after Retry-After).
                return (
                    503,
                    _one(f"the node is unreachable and this body cannot be checked: {failure}"),
                    {"Retry-After": str(self.limits.retry_after_seconds)},
                )

    def _store(
        self, records: list[Any], items: list[signing.SignedInteraction], digests: list[bytes], ids: list[str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        keys = [(item.interaction.institution, item.interaction.nonce) for item in items]
        known, live = self.outbox.lookup(ids, keys)
        results: list[dict[str, Any] | None] = [None] * len(items)
        fresh: list[int] = []
        seen_ids: dict[str, int] = {}
        seen_keys: dict[tuple[str, int], int] = {}
        for index, (item_id, key) in enumerate(zip(ids, keys, strict=True)):
            if item_id in known or item_id in seen_ids:
                results[index] = {"id": item_id, "status": "duplicate"}
            elif key in live or key in seen_keys:
                other = live.get(key) or ids[seen_keys[key]]
                results[index] = _conflict(item_id, other, items[index])
            else:
                seen_ids[item_id] = index
                seen_keys[key] = index
                fresh.append(index)
        # Backpressure before anything is stored: the whole body is refused, so a retry is clean.
        if fresh:
            per_institution: dict[str, int] = {}
            for index in fresh:
                institution = items[index].interaction.institution
                per_institution[institution] = per_institution.get(institution, 0) + 1
            depth = self.outbox.queued_by_institution()
            full = [a for a, n in per_institution.items() if depth.get(a, 0) + n > self.limits.queue_cap]
            if full:
                return (
                    429,
                    _one(
                        f"institution {full[0]} has {depth.get(full[0], 0)} interactions waiting, at most "
                        f"{self.limits.queue_cap}: retry after {self.limits.retry_after_seconds} s."
                    ),
                    {"Retry-After": str(self.limits.retry_after_seconds)},
                )
        checked = self._check(items, digests, fresh, results, ids)
        to_store = [
            NewItem(
                ids[i],
                items[i].interaction.institution,
                items[i].interaction.nonce,
                items[i].interaction.deadline,
                body_of(items[i].to_json()),
            )
            for i in checked
        ]
        if to_store:
            self.outbox.insert(to_store)
            self.metrics.accepted.inc(len(to_store))
            self.relayer.remember({ids[i]: items[i] for i in checked})
            self.relayer.wake()
        for index in checked:
            results[index] = {"id": ids[index], "status": "queued"}
        self.metrics.duplicates.inc(sum(1 for r in results if r and r["status"] == "duplicate"))
        del records
        return 202, {"items": results}, {}

    def _check(
        self,
        items: list[signing.SignedInteraction],
        digests: list[bytes],
        fresh: list[int],
        results: list[dict[str, Any] | None],
        ids: list[str],
    ) -> list[int]:
        """The fresh items that pass every check; the others get their refusal in `results`."""
        if not fresh:
            return []
        candidates = [items[i] for i in fresh]
        profiles = self.view.profiles(addresses_of(candidates))  # raises NodeDown only if never read
        now = time.time()
        passed = []
        for index in fresh:
            refusal = check_item(items[index], digests[index], self.digester, self.view, profiles, now)
            if refusal is None:
                passed.append(index)
            else:
                results[index] = {
                    "id": ids[index],
                    "status": "refused",
                    "error": refusal.error,
                    "reason": refusal.reason,
                }
                self.metrics.refused.labels(reason=refusal.error).inc()
        # A nonce used on chain: the same interaction recorded elsewhere (a duplicate) or a conflict.
        try:
            used_local = self.view.used_nonces([items[i] for i in passed])
        except Exception:
            # Node down: queue them; the relay engine checks the nonce bitmap again before sending.
            used_local = set()
        if not used_local:
            return passed
        used = [passed[j] for j in sorted(used_local)]
        events = engine.recorded_events(
            self.ledger, {(items[i].interaction.institution, items[i].interaction.nonce) for i in used}
        )
        recorded_rows = []
        for index in used:
            item = items[index]
            event = events.get((item.interaction.institution, item.interaction.nonce))
            diff = engine.differences(item, event) if event else ["the nonce was cancelled"]
            if event is None or diff:
                results[index] = {
                    "id": ids[index],
                    "status": "conflict",
                    "error": engine.NONCE_CONFLICT if event else engine.NONCE_USED,
                    "reason": engine.conflict_reason(item, event, diff)
                    if event
                    else "the nonce is used on chain "
                    "without an interaction (cancelled): sign a new interaction under a fresh nonce.",
                }
            else:
                results[index] = {"id": ids[index], "status": "duplicate", "transaction": event.tx_hash}
                recorded_rows.append((index, event))
        if recorded_rows:
            # Known from now on, so that GET answers where it was recorded.
            self.outbox.insert(
                [
                    NewItem(
                        ids[i],
                        items[i].interaction.institution,
                        items[i].interaction.nonce,
                        items[i].interaction.deadline,
                        body_of(items[i].to_json()),
                    )
                    for i, _ in recorded_rows
                ]
            )
            self.outbox.mark_recorded(
                [(ids[i], e.tx_hash, e.block_number, e.log_index, e.units, e.fee) for i, e in recorded_rows]
            )
        used_set = set(used)
        return [i for i in passed if i not in used_set]

    # ------------------------------------------------------------------ reads

    def institution(self, address: str) -> dict[str, Any]:
        info = self.ledger.institution(address)
        position = self.ledger.position(address)
        out: dict[str, Any] = {
            "address": info.address,
            "registered": info.status != "unregistered",
            "status": info.status,
            "code": info.code,
            "name": info.name,
            "signer": info.signer,
            "credit_line": info.credit_line,
            "balance": position.balance,
            "debt": position.debt,
        }
        if hasattr(self.ledger.contract.functions, "countersOf"):
            try:
                counters = self.ledger.call(self.ledger.contract.functions.countersOf(address))
                out["counters"] = _plain(counters)
            except MedmeterError:
                pass
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        health = self.relayer.health
        counts = self.outbox.counts()
        depth = counts.get("queued", 0) + counts.get("sent", 0)
        oldest = self.outbox.oldest_queued_at()
        node_ok = health.node_ok
        try:
            head = self.ledger.w3.eth.get_block("latest")
            node_ok, head_number, head_age = True, int(head["number"]), max(0.0, time.time() - int(head["timestamp"]))
        except Exception as exc:  # any failure to read the head means the node is not usable now
            node_ok, head_number, head_age = False, None, None
            health.node_error = health.node_error or str(exc)
        relayer_alive = self.relayer.alive
        ok = node_ok and relayer_alive and health.node_ok and health.ledger_refusal is None
        self.metrics.outbox_depth.set(depth)
        self.metrics.oldest_queued_age.set(time.time() - oldest if oldest else 0)
        return (200 if ok else 503), {
            "status": "ok" if ok else "degraded",
            "node_reachable": node_ok,
            "node_error": None if ok else health.node_error,
            "relayer_alive": relayer_alive,
            "ledger_refusal": health.ledger_refusal,
            "outbox_depth": depth,
            "outbox": counts,
            "oldest_queued_age_seconds": round(time.time() - oldest, 3) if oldest else 0,
            "head_block": head_number,
            "head_age_seconds": round(head_age, 3) if head_age is not None else None,
            "relayer_head_lag_blocks": (head_number - health.head_block)
            if head_number is not None and health.head_block is not None
            else None,
            "chain_id": self.ledger.deployment.chain_id,
            "ledger": self.ledger.address,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def _one(message: str) -> dict[str, Any]:
    return {"errors": [{"index": None, "message": message}]}


def _conflict(item_id: str, other: str, item: signing.SignedInteraction) -> dict[str, Any]:
    return {
        "id": item_id,
        "status": "conflict",
        "error": engine.NONCE_CONFLICT,
        "conflicts_with": other,
        "reason": f"nonce {item.interaction.nonce} of {item.interaction.institution} is already taken by interaction "
        f"{other}, with different content: sign this one under a fresh nonce.",
    }


def _address(value: str) -> str:
    if not is_address(value):
        raise InputError(f"{value!r} is not an address.")
    return to_checksum_address(value)


def create_app(service: Service, statement_workdir: Path | None = None) -> FastAPIOffline:
    app = FastAPIOffline(
        title="medmeter platform service",
        version=API_VERSION,
        description="Hospital information systems submit signed interactions; the platform relays them to the "
        "MeteringLedger and answers what became of each.",
    )

    @app.post("/v1/interactions", status_code=202, openapi_extra=POST_BODY)
    async def post_interactions(request: Request) -> Response:
        """Submit one signed interaction or a list; each is checked and stored before the answer."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > service.limits.max_body_bytes:
            return JSONResponse(_one(f"body of {length} bytes, at most {service.limits.max_body_bytes}."), 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > service.limits.max_body_bytes:
                return JSONResponse(_one(f"body over {service.limits.max_body_bytes} bytes: split it."), 413)
            chunks.append(chunk)
        from starlette.concurrency import run_in_threadpool

        status, body, headers = await run_in_threadpool(service.submit, b"".join(chunks))
        return JSONResponse(body, status, headers=headers)

    @app.get("/v1/interactions/{item_id}")
    def get_interaction(item_id: str) -> Response:
        """What became of one interaction: queued, sent, recorded, refused, expired or cancelled."""
        stored = service.outbox.get(item_id.lower())
        if stored is None:
            return JSONResponse(_one(f"no interaction {item_id} was accepted here."), 404)
        return JSONResponse(stored.public())

    @app.get("/v1/institutions/{address}/interactions")
    def list_interactions(address: str, status: str | None = None, cursor: int = 0, limit: int = 100) -> Response:
        """An institution's interactions in the order they were accepted, `limit` per page."""
        from medmeter.service.outbox import STATUSES

        try:
            checksum = _address(address)
        except InputError as exc:
            return JSONResponse(_one(str(exc)), 400)
        if status is not None and status not in STATUSES:
            return JSONResponse(_one(f"status must be one of {', '.join(STATUSES)}."), 400)
        limit = max(1, min(limit, 1000))
        rows = service.outbox.page(checksum, status, cursor, limit)
        next_cursor = rows[-1].seq if len(rows) == limit else None
        return JSONResponse({"items": [r.public() for r in rows], "next_cursor": next_cursor})

    @app.get("/v1/institutions/{address}")
    def get_institution(address: str) -> Response:
        """Registration, signer, balance and debt (and cumulative counters, where the ledger has them)."""
        try:
            return JSONResponse(service.institution(_address(address)))
        except InputError as exc:
            return JSONResponse(_one(str(exc)), 400)

    @app.get("/v1/institutions/{address}/statements/{period}")
    def get_statement(address: str, period: int) -> Response:
        """The institution's statement for a closed, anchored period, as `medmeter statement` writes it."""
        from medmeter.app.pipeline import closed_periods, settle_from_export, update_export
        from medmeter.statement.statements import build_statements

        try:
            checksum = _address(address)
        except InputError as exc:
            return JSONResponse(_one(str(exc)), 400)
        reader = Ledger(service.ledger.w3, service.ledger.deployment)
        if period not in closed_periods(reader):
            return JSONResponse(_one(f"period {period} is not closed."), 404)
        workdir = statement_workdir or Path(".medmeter") / "service-export"
        try:
            export = update_export(reader, workdir)
            statements = build_statements(settle_from_export(reader, export, period), reader)
        except MedmeterError as exc:
            return JSONResponse(_one(str(exc)), 409)
        if checksum not in statements:
            return JSONResponse(_one(f"{checksum} has no row in period {period}."), 404)
        return JSONResponse(json.loads(json.dumps(statements[checksum], default=str)))

    @app.get("/healthz")
    def healthz() -> Response:
        """Node reachable, relayer alive, outbox depth, chain head lag; 503 when degraded."""
        status, body = service.health()
        return JSONResponse(body, status)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics."""
        service.health()  # refreshes the outbox gauges
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
