"""Reading the ledger's events straight from JSON-RPC `eth_getLogs`, decoded without web3's
per-log formatting (which costs about 100 µs a log)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC
from medmeter.errors import RpcUnavailableError

DEFAULT_CHUNK_BLOCKS = 2_000


@dataclass(frozen=True)
class RecordedInteraction:
    block_number: int
    tx_hash: str
    log_index: int
    institution: str
    counterparty: str
    kind: int
    category: int
    records: int
    units: int
    fee: int
    data_hash: str
    nonce: int


def get_logs_raw(w3: Web3, address: str, topic: str, from_block: int, to_block: int) -> list[dict[str, Any]]:
    """`eth_getLogs` without web3's result formatters."""
    response = w3.provider.make_request(
        "eth_getLogs",  # type: ignore[arg-type]
        [{"address": address, "topics": [topic], "fromBlock": hex(from_block), "toBlock": hex(to_block)}],
    )
    if "error" in response:
        raise RpcUnavailableError(
            f"eth_getLogs {from_block}..{to_block} failed: {response['error']}; retry with a smaller --chunk-blocks."
        )
    return response["result"]


def decode_interaction(log: dict[str, Any]) -> RecordedInteraction:
    topics = log["topics"]
    data = bytes.fromhex(log["data"][2:])
    words = [int.from_bytes(data[i : i + 32], "big") for i in range(0, 224, 32)]
    return RecordedInteraction(
        block_number=int(log["blockNumber"], 16),
        tx_hash=log["transactionHash"],
        log_index=int(log["logIndex"], 16),
        institution=to_checksum_address("0x" + topics[1][-40:]),
        counterparty=to_checksum_address("0x" + topics[2][-40:]),
        kind=words[0],
        category=words[1],
        records=words[2],
        units=words[3],
        fee=words[4],
        data_hash="0x" + data[160:192].hex(),
        nonce=words[6],
    )


def iter_interactions(
    w3: Web3, address: str, from_block: int, to_block: int, chunk_blocks: int = DEFAULT_CHUNK_BLOCKS
) -> Iterator[RecordedInteraction]:
    for start in range(from_block, to_block + 1, chunk_blocks):
        end = min(start + chunk_blocks - 1, to_block)
        for log in get_logs_raw(w3, address, INTERACTION_RECORDED_TOPIC, start, end):
            yield decode_interaction(log)
