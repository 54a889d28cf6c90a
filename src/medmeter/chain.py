"""Connecting to an Ethereum JSON-RPC node and sending transactions from a local key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import TxReceipt

from medmeter.errors import MedmeterError, RpcUnavailableError

RPC_URL_ENV = "MEDMETER_RPC_URL"
REQUEST_TIMEOUT_SECONDS = 30
RETRIES = 5
BACKOFF_SECONDS = 0.25
RECEIPT_TIMEOUT_SECONDS = 120
GAS_HEADROOM = 1.25

T = TypeVar("T")


def connect(rpc_url: str, *, retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> Web3:
    """A Web3 connected to `rpc_url`, checked with one request.

    Read requests are retried with exponential backoff (web3's retry configuration)."""
    provider = Web3.HTTPProvider(
        rpc_url,
        request_kwargs={"timeout": REQUEST_TIMEOUT_SECONDS},
        exception_retry_configuration=ExceptionRetryConfiguration(
            errors=(requests.ConnectionError, requests.HTTPError, requests.Timeout),
            retries=retries,
            backoff_factor=backoff,
        ),
    )
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 - the probe request
    except (requests.RequestException, OSError, ValueError) as exc:
        raise RpcUnavailableError(
            f"cannot reach the JSON-RPC endpoint {rpc_url} ({type(exc).__name__}): start the devnet with "
            f"`medmeter devnet up`, or pass --rpc-url (or set {RPC_URL_ENV}) to a running node."
        ) from exc
    return w3


def rpc_guard(rpc_url: str, action: Callable[[], T]) -> T:
    """Run `action`, turning a lost connection into an error that says what to do."""
    try:
        return action()
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RpcUnavailableError(
            f"lost the connection to {rpc_url} after {RETRIES} retries ({type(exc).__name__}): check that the "
            "node is running (`medmeter devnet status`) and run the command again; nothing was half-recorded."
        ) from exc


@dataclass
class Transactor:
    """Signs and sends transactions from one local account, keeping its nonce locally so
    that many transactions can be in flight at once."""

    w3: Web3
    account: LocalAccount
    decode_error: Callable[[Exception], MedmeterError] | None = None
    _nonce: int | None = field(default=None, init=False)
    _chain_id: int | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return self.account.address

    def send(self, fn: Any, *, gas: int | None = None) -> str:
        """Estimate (which surfaces reverts with their custom error), sign and send; returns the tx hash."""
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        try:
            if gas is None:
                gas = int(fn.estimate_gas({"from": self.account.address}) * GAS_HEADROOM)
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decoded(exc) from exc
        tx = fn.build_transaction(
            {
                "from": self.account.address,
                "nonce": self._nonce,
                "gas": gas,
                "chainId": self._chain_id,
                "maxFeePerGas": self._max_fee(),
                "maxPriorityFeePerGas": 0,
            }
        )
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self._nonce += 1
        return tx_hash.to_0x_hex()

    def wait(self, tx_hash: str) -> TxReceipt:
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT_SECONDS, poll_latency=0.05
            )
        except TimeExhausted as exc:
            raise MedmeterError(
                f"transaction {tx_hash} was not mined within {RECEIPT_TIMEOUT_SECONDS} s: check that the node "
                "is mining (`medmeter devnet status`) and run the command again; it will not be recorded twice."
            ) from exc
        if receipt["status"] != 1:
            raise MedmeterError(
                f"transaction {tx_hash} reverted in block {receipt['blockNumber']}: the chain changed between "
                "the pre-check and mining; run the command again."
            )
        return receipt

    def transact(self, fn: Any, *, gas: int | None = None) -> TxReceipt:
        return self.wait(self.send(fn, gas=gas))

    def reset_nonce(self) -> None:
        self._nonce = None

    def _max_fee(self) -> int:
        block = self.w3.eth.get_block("pending")
        base_fee = block.get("baseFeePerGas", 0) or 0
        return max(2 * base_fee, 1)

    def _decoded(self, exc: Exception) -> MedmeterError:
        if self.decode_error is not None:
            return self.decode_error(exc)
        return MedmeterError(f"the contract refused the transaction: {exc}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
