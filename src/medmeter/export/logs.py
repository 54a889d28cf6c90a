"""The export's transport: raw JSON-RPC `eth_getLogs` and block headers, without web3's per-log
formatting (about 100 µs a log). The one place medmeter reads logs from a node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmeter.errors import RpcUnavailableError

# Block headers asked for in one JSON-RPC batch.
BLOCK_BATCH = 500


def fetch_logs(w3: Any, address: str, topics: Sequence[str], start: int, end: int) -> list[dict[str, Any]]:
    """Raw `eth_getLogs` for any of `topics` (topic 0); halves the range when the node refuses it
    (result limits), down to single blocks."""
    response = w3.provider.make_request(
        "eth_getLogs",
        [{"address": address, "topics": [list(topics)], "fromBlock": hex(start), "toBlock": hex(end)}],
    )
    if "error" not in response:
        return response["result"]
    if end > start:
        middle = (start + end) // 2
        return fetch_logs(w3, address, topics, start, middle) + fetch_logs(w3, address, topics, middle + 1, end)
    raise RpcUnavailableError(
        f"eth_getLogs for block {start} failed: {response['error']}; check the node (`medmeter devnet status`) "
        "and run the export again, it resumes where it stopped."
    )


def fetch_blocks(w3: Any, numbers: Sequence[int]) -> dict[int, dict[str, Any] | None]:
    """Raw block headers (without transactions) by number, in JSON-RPC batches; None if beyond the head."""
    out: dict[int, dict[str, Any] | None] = {}
    numbers = list(dict.fromkeys(numbers))
    for start in range(0, len(numbers), BLOCK_BATCH):
        chunk = numbers[start : start + BLOCK_BATCH]
        if len(chunk) == 1:
            responses = [w3.provider.make_request("eth_getBlockByNumber", [hex(chunk[0]), False])]
        else:
            responses = w3.provider.make_batch_request([("eth_getBlockByNumber", [hex(n), False]) for n in chunk])
        if not isinstance(responses, list) or len(responses) != len(chunk):
            raise RpcUnavailableError(
                f"the node answered a batch of {len(chunk)} block requests with {responses!r:.200}: check that it "
                "supports JSON-RPC batches, then run the export again."
            )
        for number, response in zip(chunk, responses, strict=True):
            if "error" in response:
                raise RpcUnavailableError(
                    f"eth_getBlockByNumber {number} failed: {response['error']}; run the export again."
                )
            out[number] = response["result"]
    return out


def block_hashes(w3: Any, numbers: Sequence[int]) -> dict[int, str | None]:
    return {n: (b["hash"] if b else None) for n, b in fetch_blocks(w3, [n for n in numbers if n >= 0]).items()}
