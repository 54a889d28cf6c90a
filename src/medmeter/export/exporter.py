"""Exporting the ledger's events to a tidy dataset: incremental, resumable and reorg-safe.

Layout of an export folder (default `reports/export/<chain-id>-<ledger>/`):

    checkpoint.json           what is exported: last block and its hash, the part files, recent
                              block hashes, institutions and closed periods seen so far
    interactions/part-*.parquet
                              the rows, one file per exported chunk of blocks (parquet dataset)
    interactions.csv          the same rows as one CSV (a derived view, rewritten atomically)
    institutions.csv, periods.csv
                              small derived views of the registry and the closed periods

The checkpoint is the only source of truth: a part file is written (atomically) before the
checkpoint that lists it, so a run killed in between leaves an orphan part that the next run
deletes before it exports that chunk again. Use `read_export` (not a glob) to read the rows.

Reorgs: every chunk starts by checking that the block the checkpoint ends at still has the
recorded hash. If not, the newest block among the recent hashes kept in the checkpoint (the
last 128 blocks plus every chunk end and block with events) that still matches the chain is
the fork point; rows after it are dropped and exported again. Hashes are always fetched before
the logs they vouch for, so a reorg racing the export is caught by the next check.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medmeter.chain.ledger import Ledger
from medmeter.errors import ChainMovedError, ExportStateError, MedmeterError
from medmeter.export.checkpoint import (
    CHECKPOINT_FILE,
    CSV_FILE,
    INSTITUTIONS_CSV,
    PARTS_DIR,
    PERIODS_CSV,
    Checkpoint,
    Part,
    locked,
    verify_part,
    write_parquet_atomic,
)
from medmeter.export.events import (
    EXPORT_TOPICS,
    INSTITUTION_REGISTERED_TOPIC,
    INTERACTION_RECORDED_TOPIC,
    INTERACTION_SCHEMA,
    PERIOD_CLOSED_TOPIC,
    check_logs,
    decode_interaction_logs,
    decode_period_close,
    decode_registration,
    interaction_table,
    split_by_topic,
)
from medmeter.export.logs import block_hashes, fetch_blocks, fetch_logs
from medmeter.export.reading import read_parts, write_csv_atomic, write_parts_csv
from medmeter.fileio import write_json_atomic

DEFAULT_CHUNK_BLOCKS = 2_000
# Requests start this many blocks wide and adapt to the event density (see Exporter._next_span).
INITIAL_SPAN = 64
TARGET_ROWS_PER_REQUEST = 5_000
# eth_getLogs requests in flight at once (see Exporter.run).
FETCH_WORKERS = 4
# A part file is written (and checkpointed) at --chunk-blocks blocks or this many rows, whichever comes first.
PART_ROWS = 250_000
REORG_WINDOW = 128
# More part files than this and the finalized ones (older than the reorg window) are merged.
MAX_PARTS = 64
# Consecutive chunks the chain may move under before the export gives up.
MAX_CHAIN_MOVES = 8

INSTITUTIONS_SCHEMA = pa.schema(
    [("address", pa.string()), ("code", pa.string()), ("name", pa.string()), ("registered_in_block", pa.int64())]
)
PERIODS_SCHEMA = pa.schema(
    [("period", pa.int64()), ("from_block", pa.int64()), ("to_block", pa.int64()), ("closed_in_block", pa.int64())]
)

FaultHook = Callable[[str, int], None]


@dataclass(frozen=True)
class ReorgRepair:
    detected_at: int  # the checkpoint's block whose hash no longer matched
    fork_block: int  # the newest block still on the chain; rows after it were exported again
    rows_dropped: int
    full_reexport: bool


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    rows_total: int
    rows_new: int  # rows written by this run (including rows exported again after a reorg)
    first_block: int  # first block scanned by this run (last_block + 1 if nothing was scanned)
    last_block: int  # the dataset now covers deployment block .. last_block
    head: int
    chunks: int  # part files (chunks of up to --chunk-blocks blocks) checkpointed by this run
    seconds: float
    orphans_removed: int
    reorg: ReorgRepair | None

    @property
    def csv_path(self) -> Path:
        return self.out_dir / CSV_FILE

    @property
    def parquet_dir(self) -> Path:
        return self.out_dir / PARTS_DIR


# ---------------------------------------------------------------------------------- the exporter


@dataclass(frozen=True)
class _Raw:
    """One request's answers from the node, not yet checked or decoded."""

    previous: int
    start: int
    end: int
    before: dict[int, str | None]
    by_topic: dict[str, list[dict[str, Any]]]
    headers: dict[int, dict[str, Any] | None] | None
    after: dict[int, str | None]


@dataclass
class _Pending:
    """Blocks read since the checkpoint but not yet written: one part file in the making."""

    first_block: int
    last_block: int
    last_hash: str | None
    institutions: list[dict[str, Any]]
    periods: list[dict[str, Any]]
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    hashes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def after(cls, state: Checkpoint) -> _Pending:
        return cls(
            state.last_block + 1,
            state.last_block,
            state.last_block_hash,
            list(state.institutions),
            list(state.periods),
        )

    def ready(self, target: int, chunk_blocks: int) -> bool:
        blocks = self.last_block - self.first_block + 1
        return blocks > 0 and (self.last_block >= target or blocks >= chunk_blocks or self.rows >= PART_ROWS)


def _plan(
    previous: int, part_first: int, span: int, target: int, chunk_blocks: int
) -> tuple[tuple[int, int, int], int]:
    """The request after block `previous` — (previous, start, end), inside the part that starts at
    `part_first` (or a new one starting at `start` once that part is full) — and that part's start."""
    first = previous + 1
    if first > part_first + chunk_blocks - 1:
        part_first = first
    return (previous, first, min(first + span - 1, target, part_first + chunk_blocks - 1)), part_first


def _fits_parts(
    in_flight: deque[tuple[tuple[int, int, int], Future[_Raw]]], pending: _Pending, chunk_blocks: int
) -> bool:
    """Whether the requests in flight, absorbed in order into the part `pending` begins, keep every
    part within `chunk_blocks` blocks."""
    part_first = pending.first_block
    for (_, first, end), _ in in_flight:
        if first > part_first + chunk_blocks - 1:
            part_first = first
        if end > part_first + chunk_blocks - 1:
            return False
    return True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Bulk JSON parsing and decoding allocate millions of objects that live on: the cyclic garbage
    collector would rescan them over and over for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Exporter:
    """Exports one ledger's events into `out_dir`; see the module docstring for the layout."""

    def __init__(
        self,
        ledger: Ledger,
        out_dir: Path,
        *,
        chunk_blocks: int = DEFAULT_CHUNK_BLOCKS,
        write_csv: bool = True,
        fault: FaultHook | None = None,
    ) -> None:
        if chunk_blocks < 1:
            raise ValueError("chunk_blocks must be at least 1")
        self.ledger = ledger
        self.w3 = ledger.w3
        self.out_dir = out_dir
        self.chunk_blocks = chunk_blocks
        self.write_csv = write_csv
        self.fault = fault

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / PARTS_DIR

    # ------------------------------------------------------------------ public

    def run(
        self,
        *,
        to_block: int | None = None,
        confirmations: int = 0,
        restart: bool = False,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> ExportResult:
        """Export new blocks up to `to_block` (default: the head), never past head - confirmations."""
        started = time.perf_counter()
        with locked(self.out_dir):
            head = self.w3.eth.block_number
            target = head - confirmations
            if to_block is not None:
                target = min(target, to_block)
            state = self._fresh() if restart else self._load()
            if restart:
                self._save(state)
            orphans = self._remove_orphans(state)
            reorg = self._repair_reorg(state)
            first_block = state.last_block + 1
            if on_total is not None:
                on_total(max(0, target - state.last_block))
            parts = rows_new = moves = 0
            span = min(self.chunk_blocks, INITIAL_SPAN)
            pending = _Pending.after(state)
            # FETCH_WORKERS requests are in flight on worker threads while this thread decodes the
            # oldest one: the node answers eth_getLogs concurrently (anvil: about 85,000 logs/s for one
            # stream, 250,000+ for three or four on 2 cores), and results are absorbed strictly in block order.
            in_flight: deque[tuple[tuple[int, int, int], Future[_Raw]]] = deque()
            planned_end, planned_base = pending.last_block, pending.first_block

            def drop_in_flight() -> None:
                while in_flight:
                    _, stale = in_flight.pop()
                    with contextlib.suppress(MedmeterError):
                        stale.result()

            with ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="medmeter-export") as pool, _gc_paused():
                while state.last_block < target:
                    if pending.ready(target, self.chunk_blocks):
                        rows_new += self._flush(state, pending, parts)
                        parts += 1
                        pending = _Pending.after(state)
                        if not _fits_parts(in_flight, pending, self.chunk_blocks):
                            # A part closed early (PART_ROWS): ranges planned for the old part layout
                            # could make the new part too long. Plan them again.
                            drop_in_flight()
                            planned_end, planned_base = pending.last_block, pending.first_block
                        continue
                    while len(in_flight) < FETCH_WORKERS and planned_end < target:
                        request, planned_base = _plan(planned_end, planned_base, span, target, self.chunk_blocks)
                        in_flight.append((request, pool.submit(self._fetch_range, *request)))
                        planned_end = request[2]
                    _, future = in_flight.popleft()
                    raw = future.result()
                    try:
                        rows = self._absorb(pending, raw)
                    except ChainMovedError as exc:
                        drop_in_flight()
                        moves += 1
                        if moves > MAX_CHAIN_MOVES:
                            raise MedmeterError(
                                f"the chain kept changing under the export ({exc}): wait until the node is stable "
                                "or export with --confirmations, then run the export again; it resumes where it "
                                "stopped."
                            ) from exc
                        reorg = self._repair_reorg(state) or reorg
                        head = self.w3.eth.block_number
                        target = min(target, head - confirmations)
                        pending = _Pending.after(state)
                        planned_end, planned_base = pending.last_block, pending.first_block
                        continue
                    moves = 0
                    span = self._next_span(span, raw.end - raw.start + 1, rows)
                    if progress is not None:
                        progress(raw.end - raw.start + 1)
            self._fill_recent_hashes(state)
            self._compact(state)
            self._write_views(state)
            return ExportResult(
                out_dir=self.out_dir,
                rows_total=state.rows,
                rows_new=rows_new,
                first_block=first_block,
                last_block=state.last_block,
                head=head,
                chunks=parts,
                seconds=time.perf_counter() - started,
                orphans_removed=orphans,
                reorg=reorg,
            )

    def _next_span(self, span: int, blocks: int, rows: int) -> int:
        """Blocks for the next request: aim at TARGET_ROWS_PER_REQUEST rows, at most double, at most
        --chunk-blocks, so that dense stretches never produce one enormous eth_getLogs response."""
        if rows == 0:
            return min(self.chunk_blocks, span * 2)
        fitted = max(1, TARGET_ROWS_PER_REQUEST * blocks // rows)
        return max(1, min(self.chunk_blocks, span * 2, fitted))

    # ------------------------------------------------------------------ state

    def _fresh(self) -> Checkpoint:
        deployment = self.ledger.deployment
        start = deployment.block - 1
        return Checkpoint(
            chain_id=deployment.chain_id,
            ledger=deployment.address,
            deployment_block=deployment.block,
            deployment_tx=deployment.tx_hash,
            last_block=start,
            last_block_hash=block_hashes(self.w3, [start]).get(start),
        )

    def _load(self) -> Checkpoint:
        path = self.checkpoint_path
        if not path.is_file():
            state = self._fresh()
            self._save(state)
            return state
        try:
            state = Checkpoint.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ExportStateError(
                f"{path} is not a medmeter export checkpoint ({type(exc).__name__}: {exc}): run `medmeter export "
                "--restart` to export from the deployment block again."
            ) from None
        deployment = self.ledger.deployment
        if (state.chain_id, state.ledger.lower()) != (deployment.chain_id, deployment.address.lower()):
            raise ExportStateError(
                f"{self.out_dir} holds the export of ledger {state.ledger} on chain {state.chain_id}, not "
                f"{deployment.address} on chain {deployment.chain_id}: choose another --out, or pass --restart to "
                "replace it."
            )
        if state.deployment_tx != deployment.tx_hash or state.deployment_block != deployment.block:
            # Same address, another deployment (a reset devnet redeployed by the same key): start over.
            state = self._fresh()
            self._save(state)
        return state

    def _save(self, state: Checkpoint) -> None:
        write_json_atomic(self.checkpoint_path, state.to_json())

    def _remove_orphans(self, state: Checkpoint) -> int:
        """Delete part files (and temporary files) that the checkpoint does not list."""
        listed = {p.file for p in state.parts}
        removed = 0
        if self.parts_dir.is_dir():
            for path in self.parts_dir.iterdir():
                if path.name not in listed:
                    path.unlink()
                    removed += 1
        for path in self.out_dir.glob(".*.tmp"):
            path.unlink()
        return removed

    def _fault(self, stage: str, chunk: int) -> None:
        if self.fault is not None:
            self.fault(stage, chunk)

    # ------------------------------------------------------------------ chunks

    def _fetch_range(self, previous: int, start: int, end: int) -> _Raw:
        """The node's side of one request (runs on the worker thread): the hashes of the previous
        block and of `end`, the logs of start..end, headers for timestamps if the logs lack them,
        and the two hashes again. `_absorb` checks that nothing moved in between."""
        before = block_hashes(self.w3, [previous, end])
        logs = fetch_logs(self.w3, self.ledger.address, EXPORT_TOPICS, start, end)
        check_logs(logs, self.ledger.address, start, end)
        by_topic = split_by_topic(logs)
        headers = None
        interactions = by_topic[INTERACTION_RECORDED_TOPIC]
        if any("blockTimestamp" not in log for log in interactions):
            headers = fetch_blocks(self.w3, sorted({int(log["blockNumber"], 16) for log in interactions}))
        after = block_hashes(self.w3, [end, previous])
        return _Raw(previous, start, end, before, by_topic, headers, after)

    def _absorb(self, pending: _Pending, raw: _Raw) -> int:
        """Check and decode one request into `pending`; returns the interactions read.

        The hashes of the previous block and of `end` were read before the logs and again after
        them: if either changed, or differs from what the export continues from, the chain moved
        (a reorg) and ChainMovedError asks the caller to repair and retry. Every log's block hash
        must agree with them too."""
        previous, end = raw.previous, raw.end
        if previous != pending.last_block:
            raise ValueError(f"request after block {previous} does not continue block {pending.last_block}")
        end_hash = raw.before.get(end)
        if previous >= 0 and raw.before.get(previous) != pending.last_hash:
            raise ChainMovedError(f"block {previous} changed")
        if end_hash is None:
            raise ChainMovedError(f"block {end} is gone")
        if raw.after.get(end) != end_hash or (previous >= 0 and raw.after.get(previous) != pending.last_hash):
            raise ChainMovedError(f"blocks {previous}..{end} changed while they were read")

        by_topic = raw.by_topic
        decoded = decode_interaction_logs(by_topic[INTERACTION_RECORDED_TOPIC])
        known = {end: end_hash}
        pairs = (
            pa.table({"block": decoded.block_number, "hash": decoded.block_hash})
            .group_by(["block", "hash"])
            .aggregate([])
        )
        seen = list(zip(pairs["block"].to_pylist(), pairs["hash"].to_pylist(), strict=True))
        seen += [
            (int(log["blockNumber"], 16), log["blockHash"])
            for topic in (INSTITUTION_REGISTERED_TOPIC, PERIOD_CLOSED_TOPIC)
            for log in by_topic[topic]
        ]
        for block, block_hash in seen:
            if known.setdefault(block, block_hash) != block_hash:
                raise ChainMovedError(f"block {block} changed while it was read")

        timestamps = None
        if len(decoded) and decoded.log_timestamp is None:
            if raw.headers is None:
                raise ValueError("the logs carry no blockTimestamp and no headers were fetched")
            timestamps = {}
            for number, block in raw.headers.items():
                if block is None or block["hash"] != known[number]:
                    raise ChainMovedError(f"block {number} changed while it was read")
                timestamps[number] = int(block["timestamp"], 16)

        for log in by_topic[INSTITUTION_REGISTERED_TOPIC]:
            reg = decode_registration(log)
            pending.institutions.append(
                {"address": reg.address, "code": reg.code, "name": reg.name, "registered_in_block": reg.block_number}
            )
        for log in by_topic[PERIOD_CLOSED_TOPIC]:
            close = decode_period_close(log)
            pending.periods.append(
                {
                    "period": close.period,
                    "from_block": close.from_block,
                    "to_block": close.to_block,
                    "closed_in_block": close.block_number,
                }
            )
        pending.periods.sort(key=lambda p: p["period"])
        table = interaction_table(
            decoded,
            timestamps=timestamps,
            close_blocks=[p["closed_in_block"] for p in pending.periods],
            codes={i["address"]: i["code"] for i in pending.institutions},
        )
        if table.num_rows:
            pending.tables.append(table)
            pending.rows += table.num_rows
        pending.last_block = end
        pending.last_hash = end_hash
        pending.hashes.update(known)
        return table.num_rows

    def _flush(self, state: Checkpoint, pending: _Pending, part_index: int) -> int:
        """Write `pending` as one part file, then the checkpoint that lists it; returns the rows written."""
        if pending.rows:
            table = pa.concat_tables(pending.tables).combine_chunks()
            name = f"part-{state.next_part:06d}-{pending.first_block:012d}-{pending.last_block:012d}.parquet"
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            digest = write_parquet_atomic(table, self.parts_dir / name)
            state.parts.append(Part(name, pending.first_block, pending.last_block, table.num_rows, digest))
            state.next_part += 1
            self._fault("part-written", part_index)
        state.institutions = pending.institutions
        state.periods = pending.periods
        state.last_block = pending.last_block
        state.last_block_hash = pending.last_hash
        state.recent_hashes.update(pending.hashes)
        self._trim_hashes(state)
        self._save(state)
        self._fault("checkpoint-written", part_index)
        return pending.rows

    def _trim_hashes(self, state: Checkpoint) -> None:
        keep = sorted(state.recent_hashes)[-REORG_WINDOW:]
        state.recent_hashes = {b: state.recent_hashes[b] for b in keep}

    def _fill_recent_hashes(self, state: Checkpoint) -> None:
        """Record the hashes of the last REORG_WINDOW blocks, so a fork point is found exactly."""
        low = max(state.deployment_block - 1, state.last_block - REORG_WINDOW + 1, 0)
        wanted = [b for b in range(low, state.last_block + 1) if b not in state.recent_hashes]
        if not wanted:
            return
        hashes = block_hashes(self.w3, [*wanted, state.last_block])
        if hashes.get(state.last_block) != state.last_block_hash:
            return  # the chain moved since the last chunk; the next run repairs it
        state.recent_hashes.update({b: h for b, h in hashes.items() if h is not None})
        self._trim_hashes(state)
        self._save(state)

    # ------------------------------------------------------------------ reorgs

    def _repair_reorg(self, state: Checkpoint) -> ReorgRepair | None:
        """If the checkpoint's last block is no longer on the chain, rewind to the fork point."""
        if state.last_block < 0:
            return None
        current = block_hashes(self.w3, [state.last_block]).get(state.last_block)
        if current == state.last_block_hash:
            return None
        detected_at = state.last_block
        candidates = sorted((b for b in state.recent_hashes if b < detected_at), reverse=True)
        chain = block_hashes(self.w3, candidates)
        fork = next((b for b in candidates if chain.get(b) == state.recent_hashes[b]), None)
        full = fork is None or fork < state.deployment_block
        rows_before = state.rows
        self._rewind(state, state.deployment_block - 1 if full or fork is None else fork)
        return ReorgRepair(detected_at, state.last_block, rows_before - state.rows, full)

    def _rewind(self, state: Checkpoint, block: int) -> None:
        """Drop everything after `block`; rewrite the part that straddles it."""
        kept: list[Part] = []
        obsolete: list[str] = []
        for part in state.parts:
            if part.to_block <= block:
                kept.append(part)
                continue
            obsolete.append(part.file)
            if part.from_block <= block:
                verify_part(self.parts_dir, part)
                table = pq.read_table(self.parts_dir / part.file, schema=INTERACTION_SCHEMA)
                table = table.filter(pc.less_equal(table["block_number"], block))
                if table.num_rows:
                    name = f"part-{state.next_part:06d}-{part.from_block:012d}-{block:012d}.parquet"
                    digest = write_parquet_atomic(table, self.parts_dir / name)
                    kept.append(Part(name, part.from_block, block, table.num_rows, digest))
                    state.next_part += 1
        state.parts = kept
        state.institutions = [i for i in state.institutions if i["registered_in_block"] <= block]
        state.periods = [p for p in state.periods if p["closed_in_block"] <= block]
        state.recent_hashes = {b: h for b, h in state.recent_hashes.items() if b <= block}
        state.last_block = block
        state.last_block_hash = state.recent_hashes.get(block) or block_hashes(self.w3, [block]).get(block)
        state.views_block = None
        self._save(state)
        for name in obsolete:
            (self.parts_dir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ compaction and views

    def _compact(self, state: Checkpoint) -> None:
        """Once there are many part files, merge runs of small finalized ones (older than the reorg
        window) into parts of up to PART_ROWS rows. The merged part is written, then the checkpoint
        that lists it instead of the small ones, then the small ones are deleted (a crash in between
        leaves orphans that the next run removes)."""
        if len(state.parts) <= MAX_PARTS:
            return
        horizon = state.last_block - REORG_WINDOW
        parts: list[Part] = []
        obsolete: list[Part] = []
        run: list[Part] = []

        def close_run() -> None:
            if len(run) < 2:
                parts.extend(run)
            else:
                parts.append(self._merge(state, run))
                obsolete.extend(run)
            run.clear()

        for part in state.parts:
            small = part.to_block <= horizon and part.rows < PART_ROWS // 2
            if not small or sum(p.rows for p in run) + part.rows > PART_ROWS:
                close_run()
            (run if small else parts).append(part)
        close_run()
        if not obsolete:
            return
        state.parts = parts
        self._save(state)
        for part in obsolete:
            (self.parts_dir / part.file).unlink(missing_ok=True)

    def _merge(self, state: Checkpoint, run: Sequence[Part]) -> Part:
        table = read_parts(self.parts_dir, run)
        name = f"part-{state.next_part:06d}-{run[0].from_block:012d}-{run[-1].to_block:012d}.parquet"
        digest = write_parquet_atomic(table, self.parts_dir / name)
        state.next_part += 1
        return Part(name, run[0].from_block, run[-1].to_block, table.num_rows, digest)

    def _write_views(self, state: Checkpoint) -> None:
        paths = [self.out_dir / INSTITUTIONS_CSV, self.out_dir / PERIODS_CSV]
        if self.write_csv:
            paths.append(self.out_dir / CSV_FILE)
        if state.views_block == state.last_block and all(p.is_file() for p in paths):
            return
        if self.write_csv:
            write_parts_csv(self.parts_dir, state.parts, self.out_dir / CSV_FILE)
        institutions = pa.Table.from_pylist(
            state.institutions,
            schema=pa.schema(
                [
                    ("address", pa.string()),
                    ("code", pa.string()),
                    ("name", pa.string()),
                    ("registered_in_block", pa.int64()),
                ]
            ),
        )
        write_csv_atomic(institutions, self.out_dir / INSTITUTIONS_CSV)
        periods = pa.Table.from_pylist(
            state.periods,
            schema=pa.schema(
                [
                    ("period", pa.int64()),
                    ("from_block", pa.int64()),
                    ("to_block", pa.int64()),
                    ("closed_in_block", pa.int64()),
                ]
            ),
        )
        write_csv_atomic(periods, self.out_dir / PERIODS_CSV)
        state.views_block = state.last_block
        self._save(state)


# ---------------------------------------------------------------------------------- reading
