"""The institution side's nonce book: the next unused nonce per institution.

Nonces are unordered on chain (a bitmap), so any unused value is valid; handing them
out sequentially keeps 256 consecutive nonces in one storage word, which is what makes
recording cheap.

Safe across processes by a file lock (`nonces.json.lock`), not by derivation: two `medmeter sign`
processes for one institution each hold the lock from reading the book to writing it back, so
they never hand out the same nonce. A command that signs wraps its whole work in `transaction()`:
the book is written only when the block ends without an error, so a failed `sign` or `simulate`
leaves it byte for byte as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from medmeter.errors import InputError, MedmeterError
from medmeter.fileio import write_json_atomic

# Long enough for another process to finish signing a large simulation, short enough to say so.
LOCK_TIMEOUT_SECONDS = 120.0


class NonceBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[str, int] | None = None  # the book inside a transaction, written on success

    def _load(self) -> dict[str, int]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in data.items()}
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise InputError(
                f"the nonce book {self.path} is damaged ({type(exc).__name__}): restore it from a backup; deleting "
                "it would hand out nonces already used, which the ledger refuses as NonceAlreadyUsed."
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        except Timeout:
            raise MedmeterError(
                f"another medmeter process has held the nonce book {self.path} for {LOCK_TIMEOUT_SECONDS:.0f} s: "
                "wait for it to finish, then run the command again."
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def transaction(self) -> Iterator[NonceBook]:
        """Hold the book's lock; reservations inside are written only if the block succeeds."""
        if self._pending is not None:  # nested: the outer transaction writes
            yield self
            return
        with self._locked():
            self._pending = self._load()
            try:
                yield self
                write_json_atomic(self.path, self._pending)
            finally:
                self._pending = None

    def reserve(self, institution: str, count: int = 1) -> int:
        """Reserve `count` consecutive nonces; returns the first."""
        with self.transaction():
            assert self._pending is not None
            first = self._pending.get(institution, 0)
            self._pending[institution] = first + count
            return first

    def peek(self, institution: str) -> int:
        if self._pending is not None:
            return self._pending.get(institution, 0)
        return self._load().get(institution, 0)
