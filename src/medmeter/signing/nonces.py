"""The institution side's nonce book: the next unused nonce per institution.

Nonces are unordered on chain (a bitmap), so any unused value is valid; handing them
out sequentially keeps 256 consecutive nonces in one storage word, which is what makes
recording cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

from medmeter.fileio import write_json_atomic


class NonceBook:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, int]:
        if not self.path.is_file():
            return {}
        return {k: int(v) for k, v in json.loads(self.path.read_text()).items()}

    def reserve(self, institution: str, count: int = 1) -> int:
        """Reserve `count` consecutive nonces; returns the first."""
        book = self._load()
        first = book.get(institution, 0)
        book[institution] = first + count
        write_json_atomic(self.path, book)
        return first

    def peek(self, institution: str) -> int:
        return self._load().get(institution, 0)
