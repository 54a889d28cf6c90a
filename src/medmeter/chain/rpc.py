"""Connecting to an Ethereum JSON-RPC node and sending transactions from a local key."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import TxReceipt

from medmeter.errors import MedmeterError, RpcUnavailableError

RPC_URL_ENV = "MEDMETER_RPC_URL"
RPC_TIMEOUT_ENV = "MEDMETER_RPC_TIMEOUT"
REQUEST_TIMEOUT_SECONDS = 30
RETRIES = 5
BACKOFF_SECONDS = 0.25
RECEIPT_TIMEOUT_SECONDS = 120
GAS_HEADROOM = 1.25
FEE_CACHE_SECONDS = 5.0
RECEIPT_POLL_SECONDS = 0.01


def connect(rpc_url: str, *, retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> Web3:
    """A Web3 connected to `rpc_url`, checked with one request.

    Requests that fail in transport (refused, reset, timed out, HTTP error status) are retried
    `retries` times in all, with exponential backoff (web3's retry configuration); each waits at
    most $MEDMETER_RPC_TIMEOUT seconds (default 30)."""
    provider = Web3.HTTPProvider(
        rpc_url,
        request_kwargs={"timeout": request_timeout()},
        exception_retry_configuration=ExceptionRetryConfiguration(
            errors=(requests.ConnectionError, requests.HTTPError, requests.Timeout),
            retries=retries,
            backoff_factor=backoff,
        ),
    )
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 - the probe request
    except Web3RPCError as exc:
        raise RpcUnavailableError(
            f"the JSON-RPC endpoint {rpc_url} answered eth_chainId with an error ({_rpc_message(exc)}): check "
            f"that it is an Ethereum node in working order, or pass another --rpc-url (or set {RPC_URL_ENV})."
        ) from exc
    except (requests.RequestException, OSError, ValueError) as exc:
        attempts = f" after {retries} attempts" if isinstance(exc, requests.RequestException) else ""
        raise RpcUnavailableError(
            f"cannot reach the JSON-RPC endpoint {rpc_url}{attempts} ({_transport_reason(exc)}): start the devnet "
            f"with `medmeter devnet up`, or pass --rpc-url (or set {RPC_URL_ENV}) to a running node."
        ) from exc
    return w3


def request_timeout() -> float:
    """Seconds one JSON-RPC request may take: $MEDMETER_RPC_TIMEOUT, default 30."""
    value = os.environ.get(RPC_TIMEOUT_ENV)
    if value is None:
        return REQUEST_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise MedmeterError(f"{RPC_TIMEOUT_ENV}={value!r} is not a positive number of seconds: fix or unset it.")
    return seconds


def _transport_reason(exc: BaseException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {request_timeout():g} s"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}".strip()
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    return type(exc).__name__


def _rpc_message(exc: Web3RPCError) -> str:
    response = getattr(exc, "rpc_response", None) or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and "message" in error:
        return f"{error.get('code', '')} {error['message']}".strip()
    return str(exc)


def rpc_failure(exc: BaseException) -> RpcUnavailableError | None:
    """A failure of the JSON-RPC transport or an error answer from the node, in the middle of a
    command, as a sentence that says what to do; None for any other exception."""
    rerun = (
        "run the command again once the node answers (`medmeter devnet status`); transactions that were not "
        "mined are not recorded, and `medmeter relay` skips what was"
    )
    if isinstance(exc, requests.RequestException):
        url = exc.request.url if exc.request is not None else "the JSON-RPC endpoint"
        return RpcUnavailableError(
            f"lost the connection to {url} after {RETRIES} attempts ({_transport_reason(exc)}): {rerun}."
        )
    if isinstance(exc, Web3RPCError):
        return RpcUnavailableError(f"the node answered a request with an error ({_rpc_message(exc)}): {rerun}.")
    return None


@dataclass
class Transactor:
    """Signs and sends transactions from one local account, keeping its nonce locally so
    that many transactions can be in flight at once."""

    w3: Web3
    account: LocalAccount
    decode_error: Callable[[Exception], MedmeterError] | None = None
    _nonce: int | None = field(default=None, init=False)
    _chain_id: int | None = field(default=None, init=False)
    _fee_cache: tuple[int, float] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return self.account.address

    def send(self, fn: Any, *, gas: int | None = None) -> str:
        """Send a contract function call (see `send_call`); returns the tx hash."""
        # A constructor has no address: it is sent to nobody (contract creation).
        data = fn.data_in_transaction if hasattr(fn, "data_in_transaction") else fn._encode_transaction_data()
        return self.send_call(getattr(fn, "address", None), data, gas=gas)

    def send_call(self, to: str | None, data: bytes | str, *, gas: int | None = None) -> str:
        """Estimate (which surfaces reverts with their custom error), sign and send `data` to `to`.

        Takes encoded calldata so that callers can encode with eth_abi directly: web3's
        argument formatting took 0.2 s per batch of 200 interactions, three times per send."""
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        call: dict[str, Any] = {"from": self.account.address, "data": data}
        if to is not None:
            call["to"] = to
        try:
            if gas is None:
                # "pending": batches still in flight count, as they will when this one is mined.
                gas = int(self.w3.eth.estimate_gas(call, "pending") * GAS_HEADROOM)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decoded(exc) from exc
        tx = {
            **call,
            "nonce": self._nonce,
            "gas": gas,
            "chainId": self._chain_id,
            "maxFeePerGas": self._max_fee(),
            "maxPriorityFeePerGas": 0,
            "value": 0,
        }
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

    def wait_raw(self, tx_hash: str) -> dict[str, Any]:
        """The receipt as JSON-RPC returns it (hex strings), without web3's per-log formatting,
        which cost more than the node's work for a batch of hundreds of logs."""
        deadline = time.monotonic() + RECEIPT_TIMEOUT_SECONDS
        while True:
            response = self.w3.provider.make_request("eth_getTransactionReceipt", [tx_hash])  # type: ignore[arg-type]
            receipt = response.get("result")
            if receipt is not None:
                break
            if "error" in response:
                raise RpcUnavailableError(f"the node failed to return the receipt of {tx_hash}: {response['error']}.")
            if time.monotonic() > deadline:
                raise MedmeterError(
                    f"transaction {tx_hash} was not mined within {RECEIPT_TIMEOUT_SECONDS} s: check that the node is "
                    "mining (`medmeter devnet status`) and run the command again; it will not be recorded twice."
                )
            time.sleep(RECEIPT_POLL_SECONDS)
        if int(receipt["status"], 16) != 1:
            raise MedmeterError(
                f"transaction {tx_hash} reverted in block {int(receipt['blockNumber'], 16)}: the chain changed "
                "between the pre-check and mining; run the command again."
            )
        return receipt

    def transact(self, fn: Any, *, gas: int | None = None) -> TxReceipt:
        return self.wait(self.send(fn, gas=gas))

    def reset_nonce(self) -> None:
        self._nonce = None

    def _max_fee(self) -> int:
        """Twice the latest base fee (EIP-1559's usual headroom), asked at most every few seconds:
        one extra request per transaction halved relay throughput."""
        now = time.monotonic()
        if self._fee_cache is None or now - self._fee_cache[1] > FEE_CACHE_SECONDS:
            block = self.w3.eth.get_block("pending")
            self._fee_cache = (max(2 * (block.get("baseFeePerGas", 0) or 0), 1), now)
        return self._fee_cache[0]

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
