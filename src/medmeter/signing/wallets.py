"""Encrypted keystores (Web3 Secret Storage, via eth-account). No key is ever written in plain text."""

from __future__ import annotations

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
# scrypt work factor; eth-account's default (2**18) takes about a second per unlock.
DEFAULT_SCRYPT_N = 2**18
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def password_from_env_or_prompt(prompt: Callable[[str], str] | None) -> Callable[[str], str]:
    """A password source: $MEDMETER_KEYSTORE_PASSWORD, else `prompt`, else an error."""

    def get(wallet_name: str) -> str:
        if (value := os.environ.get(PASSWORD_ENV)) is not None:
            return value
        if prompt is not None:
            return prompt(f"Password for keystore {wallet_name!r}")
        raise WalletError(f"no password for keystore {wallet_name!r}: set {PASSWORD_ENV} or run interactively.")

    return get


@dataclass
class KeystoreDirectory:
    folder: Path
    password: Callable[[str], str]
    scrypt_n: int = DEFAULT_SCRYPT_N
    _unlocked: dict[str, LocalAccount] = field(default_factory=dict, init=False)

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
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
        write_atomic(path, json.dumps(keystore))
        path.chmod(0o600)
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
            raise WalletError(f"no keystore {path}: create it with `medmeter wallet new {name}`.")
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
