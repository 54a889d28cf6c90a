"""The export folder's layout and its checkpoint, the folder's only source of truth.

A part file is written (atomically) before the checkpoint that lists it, so a run killed in between
leaves an orphan part that the next run deletes; `read_checkpoint` is how every reader starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medmeter.errors import ExportStateError
from medmeter.workspace import Workspace

# 2: every part carries the sha256 of its file, checked whenever the part is read again.
CHECKPOINT_FORMAT = 2
CHECKPOINT_FILE = "checkpoint.json"
PARTS_DIR = "interactions"
CSV_FILE = "interactions.csv"
INSTITUTIONS_CSV = "institutions.csv"
PERIODS_CSV = "periods.csv"


def default_export_dir(workspace: Workspace, chain_id: int, ledger_address: str) -> Path:
    return workspace.reports_dir / "export" / f"{chain_id}-{ledger_address}"


@dataclass
class Part:
    file: str
    from_block: int
    to_block: int
    rows: int
    sha256: str


@dataclass
class Checkpoint:
    chain_id: int
    ledger: str
    deployment_block: int
    deployment_tx: str
    last_block: int
    last_block_hash: str | None
    next_part: int = 1
    parts: list[Part] = field(default_factory=list)
    recent_hashes: dict[int, str] = field(default_factory=dict)
    institutions: list[dict[str, Any]] = field(default_factory=list)
    periods: list[dict[str, Any]] = field(default_factory=list)
    views_block: int | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "chain_id": self.chain_id,
            "ledger": self.ledger,
            "deployment_block": self.deployment_block,
            "deployment_tx": self.deployment_tx,
            "last_block": self.last_block,
            "last_block_hash": self.last_block_hash,
            "next_part": self.next_part,
            "parts": [vars(p) for p in self.parts],
            "recent_hashes": [[b, h] for b, h in sorted(self.recent_hashes.items())],
            "institutions": self.institutions,
            "periods": self.periods,
            "views_block": self.views_block,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {data.get('format')}, this medmeter reads format {CHECKPOINT_FORMAT}")
        return cls(
            chain_id=int(data["chain_id"]),
            ledger=str(data["ledger"]),
            deployment_block=int(data["deployment_block"]),
            deployment_tx=str(data["deployment_tx"]),
            last_block=int(data["last_block"]),
            last_block_hash=data["last_block_hash"],
            next_part=int(data["next_part"]),
            parts=[Part(**p) for p in data["parts"]],
            recent_hashes={int(b): str(h) for b, h in data["recent_hashes"]},
            institutions=list(data["institutions"]),
            periods=list(data["periods"]),
            views_block=data.get("views_block"),
        )


def read_checkpoint(out_dir: Path) -> Checkpoint:
    path = out_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ExportStateError(f"{out_dir} holds no export (no {CHECKPOINT_FILE}): run `medmeter export` first.")
    try:
        return Checkpoint.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ExportStateError(
            f"{path} is not a medmeter export checkpoint ({exc}): run `medmeter export --restart`."
        ) from None


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportStateError(
                f"another medmeter export is writing {out_dir}: wait for it to finish, then run this one again."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_parquet_atomic(table: pa.Table, path: Path) -> str:
    """Write `table` to `path` atomically; returns the file's sha256 for the checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with tmp.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return digest


def verify_part(parts_dir: Path, part: Part) -> None:
    """Refuse a part file whose bytes are not those the checkpoint recorded (edited, truncated, swapped)."""
    path = parts_dir / part.file
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ExportStateError(
            f"{path} cannot be read ({exc.strerror}): the export folder is incomplete; rebuild it with "
            "`medmeter export --restart`."
        ) from None
    if digest != part.sha256:
        raise ExportStateError(
            f"{path} changed since it was exported (sha256 {digest[:12]}..., the checkpoint recorded "
            f"{part.sha256[:12]}...): its rows cannot be trusted. Rebuild the export from the chain with "
            "`medmeter export --restart` (or delete the folder), then report again."
        )
