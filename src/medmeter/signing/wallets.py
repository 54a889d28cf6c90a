"""Encrypted keystores (Web3 Secret Storage, via eth-account). No key is ever written in plain text."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from medmeter.errors import WalletError
from medmeter.fileio import write_atomic

PASSWORD_ENV = "MEDMETER_KEYSTORE_PASSWORD"
# An empty password encrypts a key with nothing; it must be asked for, not fallen into by an unset variable.
ALLOW_EMPTY_PASSWORD_ENV = "MEDMETER_ALLOW_EMPTY_PASSWORD"
# scrypt work factor; eth-account's default (2**18) takes about a second per unlock.
DEFAULT_SCRYPT_N = 2**18
# Matched with fullmatch: `$` would let a trailing newline through ("clinic-a\n").
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def empty_password_allowed() -> bool:
    return os.environ.get(ALLOW_EMPTY_PASSWORD_ENV, "").strip().lower() in {"1", "true", "yes"}


def password_from_env_or_prompt(prompt: Callable[[str], str] | None, allow_empty: bool = False) -> Callable[[str], str]:
    """A password source: $MEDMETER_KEYSTORE_PASSWORD, else `prompt`, else an error.

    An empty password is refused unless `allow_empty` (the `--allow-empty-password` flag) or
    $MEDMETER_ALLOW_EMPTY_PASSWORD says so."""

    def get(wallet_name: str) -> str:
        if (value := os.environ.get(PASSWORD_ENV)) is not None:
            source = PASSWORD_ENV
        elif prompt is not None:
            value, source = prompt(f"Password for keystore {wallet_name!r}"), "the prompt"
        else:
            raise WalletError(f"no password for keystore {wallet_name!r}: set {PASSWORD_ENV} or run interactively.")
        if value == "" and not (allow_empty or empty_password_allowed()):
            raise WalletError(
                f"the password for keystore {wallet_name!r} from {source} is empty: give a real one, or pass "
                f"--allow-empty-password (or set {ALLOW_EMPTY_PASSWORD_ENV}=1) if you really want none."
            )
        return value

    return get


def wallet_listing(name: str, names: list[str]) -> str:
    """'keystores here: a, b; did you mean a?' for an error about a name that does not exist."""
    if not names:
        return "there are no keystores here yet"
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"keystores here: {shown}" + (f"; did you mean {' or '.join(close)}?" if close else "")


@dataclass
class KeystoreDirectory:
    folder: Path
    password: Callable[[str], str]
    scrypt_n: int = DEFAULT_SCRYPT_N
    _unlocked: dict[str, LocalAccount] = field(default_factory=dict, init=False)

    def path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise WalletError(f"wallet name {name!r} is not allowed: use lower-case letters, digits, '-', '_' or '.'.")
        return self.folder / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json")) if self.folder.is_dir() else []

    def create(self, name: str, private_key: bytes | None = None) -> str:
        """Create keystore `name` with a fresh (or given) key; returns its address."""
        path = self.path(name)
        if path.exists():
            raise WalletError(f"keystore {path} already exists: pick another name or remove it first.")
        account = Account.from_key(private_key) if private_key else Account.create()
        keystore = Account.encrypt(account.key, self.password(name), kdf="scrypt", iterations=self.scrypt_n)
        write_atomic(path, json.dumps(keystore), mode=0o600)  # owner-only from the moment it exists
        self._unlocked[name] = account
        return account.address

    def address(self, name: str) -> str:
        data = self._read(name)
        if "address" in data:
            return _checksum(data["address"])
        return self.unlock(name).address

    def unlock(self, name: str) -> LocalAccount:
        if name in self._unlocked:
            return self._unlocked[name]
        data = self._read(name)
        try:
            key = Account.decrypt(data, self.password(name))
        except ValueError as exc:
            if "MAC mismatch" not in str(exc):
                raise WalletError(f"keystore {self.path(name)} is damaged ({exc}): restore it from a backup.") from None
            raise WalletError(
                f"cannot unlock keystore {self.path(name)}: wrong password ({exc}); set {PASSWORD_ENV} to the "
                "password it was created with."
            ) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise WalletError(
                f"keystore {self.path(name)} is damaged ({type(exc).__name__}: {exc}): restore it from a backup."
            ) from None
        account: LocalAccount = Account.from_key(key)
        self._unlocked[name] = account
        return account

    def _read(self, name: str) -> dict[str, object]:
        path = self.path(name)
        if not path.is_file():
            raise WalletError(
                f"no keystore named {name!r} ({wallet_listing(name, self.names())}): check the name with "
                f"`medmeter wallet list`, or create it with `medmeter wallet new {name}` if it is a new participant."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise WalletError(f"keystore {path} is not valid JSON ({exc.msg}): restore it from a backup.") from None
        if not isinstance(data, dict) or ("crypto" not in data and "Crypto" not in data):
            raise WalletError(f"{path} is not an Ethereum keystore: restore it from a backup.")
        return data


def _checksum(address: object) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(str(address))
