"""The service's relayer: drains the outbox continuously through `medmeter.relay.engine.relay`
(the same code path as `medmeter relay`) and records every state change in the outbox as it happens.

Crash model: the process may die at any instant. An item is queued or sent in the outbox until its
outcome is committed; at start every sent item is re-checked (`reconcile`): its transaction's receipt
if the node knows it, else the nonce bitmap and the recorded events decide recorded / conflict /
queued again. A queued item that was in fact sent before the crash is harmless to send again: the
engine's bitmap check and the contract's nonce rule make sure it is recorded once, and the engine
reports it as already recorded with the original event's transaction.

If the node is down, items stay queued, health says degraded, and the loop retries with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medmeter.chain.ledger import Ledger
from medmeter.errors import MedmeterError
from medmeter.relay import engine
from medmeter.relay.engine import Recorded, Rejection
from medmeter.service.metrics import Metrics
from medmeter.service.outbox import Outbox, Stored
from medmeter.signing.interaction import SignedInteraction, parse_signed

log = logging.getLogger("medmeter.service")

IDLE_POLL_SECONDS = 0.02
# How long a part-filled batch waits for more items before it is sent: a batch of one costs about
# 70,000 gas, a full batch of 100 about 17,600 per item, and hospital systems post as exchanges
# happen, a few items at a time. A quarter second of added latency buys batches up to four times
# cheaper per item (and as many fewer transactions) whenever items trickle in.
BATCH_LINGER_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 5.0
HELD_RETRY_SECONDS = 2.0
FINAL_STATUS = {"InteractionExpired": "expired"}
# Parsed items kept in memory between intake and relaying (about 1 KB each).
PARSED_CACHE_ITEMS = 200_000


@dataclass
class Health:
    node_ok: bool = False
    node_error: str | None = None
    heartbeat: float = field(default_factory=time.monotonic)
    head_block: int | None = None
    head_timestamp: int | None = None
    reconciled: bool = False
    # Why the ledger refuses the relayer's batches (paused, role revoked), while it does; items wait.
    ledger_refusal: str | None = None


class _OutboxListener:
    """Commits each engine event to the outbox before the engine goes on."""

    def __init__(
        self, outbox: Outbox, rows: list[Stored], metrics: Metrics, forget: Callable[[list[str]], None] | None = None
    ) -> None:
        self.outbox = outbox
        self.rows = rows
        self.metrics = metrics
        self.forget = forget or (lambda _ids: None)
        self.held: str | None = None

    def sent(self, tx_hash: str, indices: list[int]) -> None:
        self.outbox.mark_sent([self.rows[i].id for i in indices], tx_hash)
        self.metrics.batch_size.observe(len(indices))

    def recorded(self, entries: list[Recorded]) -> None:
        self.outbox.mark_recorded(
            [(self.rows[e.index].id, e.tx_hash, e.block_number, e.log_index, e.units, e.fee) for e in entries]
        )
        self.metrics.recorded.inc(len(entries))
        self.forget([self.rows[e.index].id for e in entries])
        now = time.time()
        for entry in entries:
            self.metrics.post_to_recorded.observe(max(0.0, now - self.rows[entry.index].accepted_at))

    def refused(self, rejection: Rejection) -> None:
        if rejection.held:
            # The ledger refuses the relayer (paused, role revoked): the item stays queued, acknowledged
            # as it was, and is relayed once the cause is gone.
            self.held = rejection.reason
            return
        status = FINAL_STATUS.get(rejection.error_name, "refused")
        self.outbox.mark_final([(self.rows[rejection.index].id, status, rejection.error_name, rejection.reason)])
        self.forget([self.rows[rejection.index].id])
        self.metrics.refused.labels(reason=rejection.error_name).inc()

    def unsettled(self, tx_hash: str, indices: list[int], reason: str) -> None:
        # Left as sent: reconcile decides from the chain what became of them.
        log.warning("transaction %s unsettled (%d items): %s", tx_hash, len(indices), reason)


class Relayer:
    def __init__(
        self,
        ledger: Ledger,
        outbox: Outbox,
        metrics: Metrics,
        *,
        batch_size: int = engine.DEFAULT_BATCH_SIZE,
        chunk_batches: int = engine.MAX_IN_FLIGHT * 2,
        confirmations: int = 0,
        linger: float = BATCH_LINGER_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.linger = linger
        self.outbox = outbox
        self.metrics = metrics
        self.batch_size = batch_size
        self.chunk = batch_size * chunk_batches
        self.confirmations = confirmations
        self.health = Health()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medmeter-relayer", daemon=True)
        self._parsed: dict[str, SignedInteraction] = {}
        self._parsed_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and time.monotonic() - self.health.heartbeat < 60

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            self.health.heartbeat = time.monotonic()
            try:
                if not self.health.reconciled:
                    self.reconcile()
                    self.health.reconciled = True
                worked = self.step()
                self.health.node_ok, self.health.node_error = True, None
                backoff = 0.25
                if not worked:
                    self._wake.wait(IDLE_POLL_SECONDS * 10)
                    self._wake.clear()
            except Exception as exc:  # the node is down or failing: keep everything queued, retry
                from medmeter.chain.rpc import rpc_failure

                # A MedmeterError (a node answering nonceBitmap in the wrong shape, say) is already a
                # sentence; only an unforeseen exception deserves a traceback in the log.
                failure = rpc_failure(exc) or (exc if isinstance(exc, MedmeterError) else None)
                self.health.node_ok = False
                self.health.node_error = str(failure or exc)
                self.health.reconciled = False  # sent items of the failed step must be re-checked
                if failure is None:
                    log.exception("relayer step failed")
                else:
                    log.warning("relayer: %s", failure)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def remember(self, parsed: dict[str, SignedInteraction]) -> None:
        """Intake's parsed items, so the relayer does not parse their stored bodies again (a third of
        its time); bounded, and after a restart the bodies are parsed from the outbox as before."""
        with self._parsed_lock:
            if len(self._parsed) + len(parsed) <= PARSED_CACHE_ITEMS:
                self._parsed.update(parsed)

    def forget(self, ids: list[str]) -> None:
        with self._parsed_lock:
            for item_id in ids:
                self._parsed.pop(item_id, None)

    def _items(self, rows: list[Stored]) -> list[SignedInteraction]:
        import json

        with self._parsed_lock:
            known = [self._parsed.get(row.id) for row in rows]
        return [
            item if item is not None else parse_signed(json.loads(row.body), f"outbox item {row.id}")
            for item, row in zip(known, rows, strict=True)
        ]

    def step(self) -> bool:
        """Relay one chunk of queued items; False if there was none."""
        rows = self.outbox.next_queued(self.chunk)
        self._observe_head()
        if not rows:
            return False
        if len(rows) < self.batch_size and self.linger > 0:
            self._stop.wait(self.linger)
            rows = self.outbox.next_queued(self.chunk)
        items = self._items(rows)
        listener = _OutboxListener(self.outbox, rows, self.metrics, self.forget)
        engine.relay(
            self.ledger,
            items,
            batch_size=self.batch_size,
            listener=listener,
            confirmations=self.confirmations,
            notice=lambda message: log.warning("relayer: %s", message),
            attempts={i: row.attempts for i, row in enumerate(rows)},
        )
        if listener.held != self.health.ledger_refusal:
            if listener.held:
                log.warning("relayer: the ledger refuses the relayer, items wait: %s", listener.held)
            else:
                log.warning("relayer: the ledger takes the relayer's batches again")
        self.health.ledger_refusal = listener.held
        if listener.held:
            self._stop.wait(HELD_RETRY_SECONDS)  # one dry run every few seconds until the cause is gone
        return True

    def _observe_head(self) -> None:
        block: Any = self.ledger.w3.eth.get_block("latest")
        self.health.head_block = int(block["number"])
        self.health.head_timestamp = int(block["timestamp"])

    def reconcile(self) -> None:
        """Re-check every sent item against the chain: recorded (receipt or matching event), a
        conflict, or back to queued when the chain has not used its nonce."""
        rows = self.outbox.in_status("sent")
        if not rows:
            return
        items = self._items(rows)
        used = engine.find_already_recorded(self.ledger, items)
        unused = [rows[i].id for i in range(len(rows)) if i not in used]
        if used:
            indices = sorted(used)
            keys = {(items[i].interaction.institution, items[i].interaction.nonce) for i in indices}
            events = engine.recorded_events(self.ledger, keys)
            recorded, final = [], []
            for i in indices:
                item = items[i]
                event = events.get((item.interaction.institution, item.interaction.nonce))
                if event is None:
                    final.append((rows[i].id, "cancelled", engine.NONCE_USED, "the nonce was cancelled on chain."))
                    continue
                diff = engine.differences(item, event)
                if diff:
                    final.append(
                        (rows[i].id, "refused", engine.NONCE_CONFLICT, engine.conflict_reason(item, event, diff))
                    )
                else:
                    recorded.append(
                        (rows[i].id, event.tx_hash, event.block_number, event.log_index, event.units, event.fee)
                    )
            self.outbox.mark_recorded(recorded)
            self.outbox.mark_final(final)
            self.metrics.recorded.inc(len(recorded))
        self.outbox.requeue(unused)
        log.info("reconciled %d sent item(s): %d on chain, %d queued again", len(rows), len(used), len(unused))
