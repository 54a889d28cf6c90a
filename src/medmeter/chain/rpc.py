"""Connecting to an Ethereum JSON-RPC node and sending transactions from a local key."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import RPCEndpoint, TxReceipt

from medmeter.errors import (
    ContractExecutionError,
    HistoricalStateError,
    MedmeterError,
    ReorgedError,
    RpcUnavailableError,
    TransactionStuckError,
)

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
        # web3's validation middleware asks eth_chainId before every eth_call and transaction: one
        # round trip per batch dry run and send, for an answer that never changes on an endpoint.
        cache_allowed_requests=True,
        cacheable_requests={RPCEndpoint("eth_chainId")},
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


# Words with which nodes report that the EVM ran the code and it failed: anvil/geth/besu
# ("execution reverted", "invalid opcode: MCOPY", "out of gas"), Ganache ("VM Exception while processing
# transaction: invalid opcode"), Hardhat/EDR ("reverted with", "invalid opcode"). None of them is an outage.
EXECUTION_FAILURE_MARKERS = (
    "revert",
    "invalid opcode",
    "opcode 0x",
    "vm exception",
    "out of gas",
    "stack underflow",
    "stack overflow",
    "invalid jump",
    "bad jump",
    "static state change",
    "write protection",
    "execution error",
    "execution failed",
)
# A contract execution failure whose advice is the EVM version: the node lacks an opcode the code uses.
UNSUPPORTED_OPCODE_MARKERS = ("invalid opcode", "opcode 0x", "opcode not defined", "notactivated")


def execution_failure(exc: BaseException) -> MedmeterError | None:
    """A contract execution failure (a revert, an invalid opcode, out of gas) that reached the caller
    undecoded, as a sentence that says it is the code, not the node; None for anything else."""
    if isinstance(exc, ContractLogicError):
        message = str(exc.message if getattr(exc, "message", None) else exc)
    elif isinstance(exc, Web3RPCError):
        message = _rpc_message(exc)
    else:
        return None
    lowered = message.lower()
    if isinstance(exc, Web3RPCError) and not any(marker in lowered for marker in EXECUTION_FAILURE_MARKERS):
        return None
    if any(marker in lowered for marker in UNSUPPORTED_OPCODE_MARKERS):
        return ContractExecutionError(
            f"the node could not execute the ledger's code ({message}): the ledger was compiled for a newer EVM "
            "than this node runs (Ganache 7.9.2 stops at shanghai). Redeploy for the node's version: "
            "`MEDMETER_EVM_VERSION=shanghai medmeter deploy` (deploy detects it when the variable is unset). "
            "This is not a node outage; running the command again will not help."
        )
    return ContractExecutionError(
        f"the contract refused the call ({message}): the node answered, and the ledger's code failed, so running "
        "the command again unchanged fails the same way; check the arguments, the roles and the ledger's state."
    )


# How nodes say the state of a past block is gone: geth ("missing trie node", "historical state … is not
# available", "required historical state unavailable"), and others in like words. anvil --prune-history
# says "BlockOutOfRangeError: block height is H but requested was R" with R < H (R > H is a future block).
PRUNED_STATE_MARKERS = (
    "missing trie node",
    "historical state",
    "state unavailable",
    "state not available",
    "state is not available",
    "pruned",
)
_ANVIL_OUT_OF_RANGE = re.compile(r"block height is (\d+) but requested was (\d+)")


def historical_state_failure(exc: BaseException) -> HistoricalStateError | None:
    """The node answered that it keeps no state for the block asked about, as a sentence that says
    which node would answer (an archive node) instead of advising to wait; None for anything else."""
    if not isinstance(exc, Web3RPCError):
        return None
    message = _rpc_message(exc)
    lowered = message.lower()
    out_of_range = _ANVIL_OUT_OF_RANGE.search(lowered)
    pruned = out_of_range is not None and int(out_of_range.group(2)) < int(out_of_range.group(1))
    if not pruned and not any(marker in lowered for marker in PRUNED_STATE_MARKERS):
        return None
    return HistoricalStateError(
        f"the node no longer keeps the state of a past block this command reads ({message}): it prunes old "
        "state, as full nodes do (geth keeps the last 128 blocks). Run the command against an archive node "
        "(geth --gcmode=archive, anvil without --prune-history) with --rpc-url; running it again on this node "
        "will not help."
    )


def rpc_failure(exc: BaseException) -> MedmeterError | None:
    """A failure of the JSON-RPC transport or an error answer from the node, in the middle of a
    command, as a sentence that says what to do; None for any other exception.

    A contract execution failure (revert, invalid opcode) is the code's, not the node's: it gets
    `execution_failure`'s sentence, never the advice to wait for the node."""
    rerun = (
        "run the command again once the node answers (`medmeter devnet status`); transactions that were not "
        "mined are not recorded, and `medmeter relay` skips what was"
    )
    if (failure := execution_failure(exc)) is not None:
        return failure
    if (pruned := historical_state_failure(exc)) is not None:
        return pruned
    if isinstance(exc, requests.RequestException):
        url = exc.request.url if exc.request is not None else "the JSON-RPC endpoint"
        return RpcUnavailableError(
            f"lost the connection to {url} after {RETRIES} attempts ({_transport_reason(exc)}): {rerun}."
        )
    if isinstance(exc, Web3RPCError):
        return RpcUnavailableError(f"the node answered a request with an error ({_rpc_message(exc)}): {rerun}.")
    return None


@dataclass
class SentTransaction:
    """What is needed to rebroadcast or replace a transaction that the node lost or left unmined."""

    nonce: int
    fields: dict[str, Any]  # the unsigned transaction, fees included
    hashes: list[str]  # the original first, then each replacement (any of them may be mined)
    sent_at: float


# Gap repair and replacement: a transaction not mined within this many seconds is rebroadcast (if the
# node forgot it) or replaced at a higher fee; after MAX_REPLACEMENTS the wait gives up (never for ever).
REPLACE_AFTER_SECONDS = 30.0
MAX_REPLACEMENTS = 4
# EIP-1559 replacement rule of geth/anvil/besu: both fees at least 10 % higher; doubling clears it.
FEE_BUMP_FACTOR = 2


@dataclass
class Transactor:
    """Signs and sends transactions from one local account, keeping its nonce locally so
    that many transactions can be in flight at once.

    The local nonce is a cache of the chain's: it is re-read from the node whenever the node says
    it is wrong ("nonce too low" after another process used the account, a lost answer to a send
    the node accepted), on `sync_nonce()`, and before gap repair. A transaction that is not mined
    within `replace_after` seconds is rebroadcast if the node dropped it, preceded by no-op
    transactions if the account's nonce sequence has a gap, and otherwise replaced by the same
    call at a doubled fee, at most `max_replacements` times."""

    w3: Web3
    account: LocalAccount
    decode_error: Callable[[Exception], MedmeterError] | None = None
    replace_after: float = REPLACE_AFTER_SECONDS
    max_replacements: int = MAX_REPLACEMENTS
    _nonce: int | None = field(default=None, init=False)
    _chain_id: int | None = field(default=None, init=False)
    _fee_cache: tuple[int, float] | None = field(default=None, init=False)
    _sent: dict[str, SentTransaction] = field(default_factory=dict, init=False)

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
            self.sync_nonce()
        call: dict[str, Any] = {"from": self.account.address, "data": data}
        if to is not None:
            call["to"] = to
        try:
            if gas is None:
                # "pending": batches still in flight count, as they will when this one is mined.
                gas = int(self.w3.eth.estimate_gas(call, "pending") * GAS_HEADROOM)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decoded(exc) from exc
        fields = {**call, "gas": gas, "chainId": self._chain_id, "maxFeePerGas": self._max_fee(), "value": 0}
        fields["maxPriorityFeePerGas"] = 0
        for attempt in range(2):
            assert self._nonce is not None
            nonce = self._nonce
            try:
                tx_hash = self._broadcast({**fields, "nonce": nonce})
            except Web3RPCError as exc:
                # Another sender used this account, or the node accepted an earlier send whose answer
                # was lost: the chain's count is the truth; take it and sign again, once.
                if attempt == 0 and _nonce_rejected(exc):
                    self.sync_nonce()
                    continue
                raise
            self._nonce = nonce + 1
            self._sent[tx_hash] = SentTransaction(nonce, {**fields, "nonce": nonce}, [tx_hash], time.monotonic())
            return tx_hash
        raise AssertionError("unreachable")

    def _broadcast(self, fields: dict[str, Any]) -> str:
        signed = self.account.sign_transaction(fields)
        try:
            return self.w3.eth.send_raw_transaction(signed.raw_transaction).to_0x_hex()
        except Web3RPCError as exc:
            if "already known" in _rpc_message(exc).lower():  # the node has it: same bytes, same hash
                return "0x" + signed.hash.hex().removeprefix("0x")
            raise

    def sync_nonce(self) -> int:
        """Take the account's next nonce from the node (counting its pending transactions)."""
        self._nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        return self._nonce

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

    def wait_raw(self, tx_hash: str, *, allow_revert: bool = False, confirmations: int = 0) -> dict[str, Any]:
        """The receipt as JSON-RPC returns it (hex strings), without web3's per-log formatting,
        which cost more than the node's work for a batch of hundreds of logs.

        Waits for whichever of the transaction's replacements is mined, replacing it as the class
        says, then until `confirmations` more blocks are on top of it. With `allow_revert` a
        reverted receipt (status 0) is returned for the caller to re-check, instead of raised."""
        sent = self._sent.get(tx_hash)
        started = time.monotonic()
        deadline = started + max(RECEIPT_TIMEOUT_SECONDS, self.replace_after * (self.max_replacements + 2))
        next_action = started + self.replace_after
        replacements = 0
        while True:
            receipt = self._first_receipt(sent.hashes if sent else [tx_hash])
            if receipt is not None:
                break
            now = time.monotonic()
            if now > deadline or (sent is None and now - started > RECEIPT_TIMEOUT_SECONDS):
                raise TransactionStuckError(
                    f"transaction {tx_hash} was not mined within {now - started:.0f} s despite {replacements} "
                    "replacement(s) at higher fees: check that the node is mining (`medmeter devnet status`); its "
                    "items stay unconfirmed and are checked against the chain again, so nothing is recorded twice."
                )
            if sent is not None and now >= next_action and replacements < self.max_replacements:
                self._repair(sent)
                replacements += 1
                next_action = now + self.replace_after
            time.sleep(RECEIPT_POLL_SECONDS)
        if int(receipt["status"], 16) != 1 and not allow_revert:
            raise MedmeterError(
                f"transaction {receipt['transactionHash']} reverted in block {int(receipt['blockNumber'], 16)}: the "
                "chain changed between the pre-check and mining; run the command again."
            )
        if confirmations > 0:
            receipt = self._confirmed(receipt, confirmations, deadline)
        self._sent.pop(tx_hash, None)
        return receipt

    def _first_receipt(self, hashes: list[str]) -> dict[str, Any] | None:
        for candidate in hashes:
            response = self.w3.provider.make_request("eth_getTransactionReceipt", [candidate])  # type: ignore[arg-type]
            if "error" in response:
                raise RpcUnavailableError(f"the node failed to return the receipt of {candidate}: {response['error']}.")
            if response.get("result") is not None:
                return response["result"]
        return None

    def _confirmed(self, receipt: dict[str, Any], confirmations: int, deadline: float) -> dict[str, Any]:
        """Wait until `confirmations` blocks follow the receipt's, then re-read it: if its block left the
        chain meanwhile (a reorg), the transaction is waited for again from the start."""
        block = int(receipt["blockNumber"], 16)
        while self.w3.eth.block_number < block + confirmations:
            if time.monotonic() > deadline:
                raise TransactionStuckError(
                    f"transaction {receipt['transactionHash']} was mined in block {block} but {confirmations} "
                    "confirmation(s) did not follow in time: check that the node is producing blocks."
                )
            time.sleep(max(RECEIPT_POLL_SECONDS, 0.05))
        again = self._first_receipt([receipt["transactionHash"]])
        if again is None or again["blockHash"] != receipt["blockHash"]:
            raise ReorgedError(f"transaction {receipt['transactionHash']} left the chain in a reorg")
        return again

    def _repair(self, sent: SentTransaction) -> None:
        """One step of getting a stuck transaction mined: fill a nonce gap below it with no-op
        transfers, rebroadcast it if the node forgot it, or else replace it at a doubled fee."""
        chain_next = self.w3.eth.get_transaction_count(self.account.address, "pending")
        for missing in range(chain_next, sent.nonce):
            # A gap: the node holds our transaction back until every lower nonce is used.
            self._broadcast(self._no_op(missing))
        known = self.w3.provider.make_request("eth_getTransactionByHash", [sent.hashes[-1]])  # type: ignore[arg-type]
        if known.get("result") is None:
            self._broadcast(sent.fields)  # dropped from the pool: the same signed bytes again
            return
        fields = dict(sent.fields)
        priority = max(int(fields["maxPriorityFeePerGas"]) * FEE_BUMP_FACTOR, 1_000_000_000)
        fields["maxPriorityFeePerGas"] = priority
        fields["maxFeePerGas"] = max(int(fields["maxFeePerGas"]) * FEE_BUMP_FACTOR, self._max_fee()) + priority
        try:
            sent.hashes.append(self._broadcast(fields))
            sent.fields = fields
        except Web3RPCError as exc:
            if not _nonce_rejected(exc):
                raise
            # The nonce was used meanwhile: the original (or an earlier replacement) was mined.

    def _no_op(self, nonce: int) -> dict[str, Any]:
        return {
            "from": self.account.address,
            "to": self.account.address,
            "value": 0,
            "gas": 21_000,
            "nonce": nonce,
            "chainId": self._chain_id or self.w3.eth.chain_id,
            "maxFeePerGas": self._max_fee() * FEE_BUMP_FACTOR + 1_000_000_000,
            "maxPriorityFeePerGas": 1_000_000_000,
        }

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


def _nonce_rejected(exc: Web3RPCError) -> bool:
    message = _rpc_message(exc).lower()
    return "nonce too low" in message or "nonce has already been used" in message or "underpriced" in message


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
