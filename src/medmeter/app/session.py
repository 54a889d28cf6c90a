"""What a command needs, built once per invocation: workspace, node, keystores, ledger.

Passed explicitly (no module-level state), so tests and scripts can build their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from eth_utils import is_address, to_checksum_address
from web3 import Web3

from medmeter.chain.deployment import Deployment, load_deployment
from medmeter.chain.ledger import Ledger
from medmeter.chain.rpc import RPC_URL_ENV, connect
from medmeter.errors import MedmeterError, WalletError
from medmeter.signing.nonces import NonceBook
from medmeter.signing.wallets import (
    DEFAULT_SCRYPT_N,
    KeystoreDirectory,
    password_from_env_or_prompt,
    wallet_listing,
)
from medmeter.toolchain import devnet
from medmeter.workspace import Workspace

SCRYPT_N_ENV = "MEDMETER_SCRYPT_N"
OPERATOR_WALLET = "operator"


@dataclass
class Session:
    workspace: Workspace
    rpc_url_option: str | None = None
    operator_name: str = OPERATOR_WALLET
    deployment_file: Path | None = None
    prompt: Callable[[str], str] | None = None
    allow_empty_password: bool = False
    _ledgers: dict[bool, Ledger] = field(default_factory=dict, init=False)

    @cached_property
    def rpc_url(self) -> str:
        if self.rpc_url_option:
            return self.rpc_url_option
        if env := os.environ.get(RPC_URL_ENV):
            return env
        info = devnet.read_info(self.workspace)
        if info is None:
            raise MedmeterError(
                f"no node to talk to: start the devnet with `medmeter devnet up`, or pass --rpc-url (or set "
                f"{RPC_URL_ENV})."
            )
        return info.rpc_url

    @cached_property
    def w3(self) -> Web3:
        return connect(self.rpc_url)

    @cached_property
    def keystores(self) -> KeystoreDirectory:
        raw = os.environ.get(SCRYPT_N_ENV, str(DEFAULT_SCRYPT_N))
        # scrypt needs a power of two above 1; a typo here would otherwise surface as a crypto traceback.
        if not raw.isdigit() or len(raw) > 12 or (n := int(raw)) < 2 or n & (n - 1):
            raise MedmeterError(f"{SCRYPT_N_ENV}={raw!r} is not a power of two above 1: unset it or give e.g. 262144.")
        password = password_from_env_or_prompt(self.prompt, self.allow_empty_password)
        return KeystoreDirectory(self.workspace.keystore_dir, password, n)

    @cached_property
    def nonce_book(self) -> NonceBook:
        return NonceBook(self.workspace.state_dir / "nonces.json")

    @cached_property
    def deployment(self) -> Deployment:
        return load_deployment(self.workspace, self.w3, self.deployment_file)

    def ledger(self, *, as_operator: bool = True) -> Ledger:
        if as_operator not in self._ledgers:
            sender = self.operator() if as_operator else None
            self._ledgers[as_operator] = Ledger(self.w3, self.deployment, sender)
        return self._ledgers[as_operator]

    def ledger_as(self, wallet: str) -> Ledger:
        """The ledger with transactions sent from keystore `wallet` (a role's own key, such as the
        demo's registrar), funded for gas on a dev node."""
        if not self.keystores.exists(wallet):
            raise WalletError(
                f"no keystore {wallet!r} ({wallet_listing(wallet, self.keystores.names())}): create it with "
                f"`medmeter wallet new {wallet}` and grant it its role with `medmeter roles grant`."
            )
        account = self.keystores.unlock(wallet)
        self.ensure_funded(account.address)
        return Ledger(self.w3, self.deployment, account)

    def operator(self):  # -> LocalAccount
        if not self.keystores.exists(self.operator_name):
            names = self.keystores.names()
            if not names:
                raise WalletError(
                    f"no operator keystore {self.operator_name!r} (there are no keystores here yet): create it with "
                    f"`medmeter wallet new {self.operator_name}` before `medmeter deploy` (the demo does this for you)."
                )
            # A new key made now would hold none of the ledger's roles: point at the keystores that exist instead.
            raise WalletError(
                f"no operator keystore {self.operator_name!r} ({wallet_listing(self.operator_name, names)}): pass "
                "--operator with the keystore that deployed the ledger (a new key would hold none of its roles)."
            )
        account = self.keystores.unlock(self.operator_name)
        self.ensure_funded(account.address)
        return account

    def ensure_funded(self, address: str) -> None:
        """On a dev node (anvil, Ganache, Hardhat) give a key with no ether some, so it can pay for gas;
        elsewhere say in one sentence how to fund it (`chain.deployment.fund_account`)."""
        from medmeter.chain.deployment import fund_account

        fund_account(self.w3, address)

    def resolve_address(self, value: str) -> str:
        """An address given as 0x… or as a keystore name."""
        if is_address(value):
            return to_checksum_address(value)
        if self.keystores.exists(value):
            return self.keystores.address(value)
        raise MedmeterError(
            f"{value!r} is neither an address nor a keystore name ({wallet_listing(value, self.keystores.names())}): "
            "check the name with `medmeter wallet list`."
        )
