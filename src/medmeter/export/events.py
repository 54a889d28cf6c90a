"""From raw ledger logs to rows of the interaction dataset.

The one decoder of the ledger's events. `decode_interaction_logs` + `interaction_table` work on
the raw JSON of
  `eth_getLogs`: the seven fixed-size data words of every `InteractionRecorded` log are decoded
  at once (the data strings joined, hex-decoded in one call, viewed as an `(n, 7, 32)` numpy
  byte array whose low eight bytes per word are read as big-endian integers); addresses are
  checksummed and hex quantities parsed once per distinct value, so no per-log work remains
  but a few list comprehensions that pick fields out of the JSON;
The tests' oracle (`tests/support/reference_decoder.py`) decodes the same logs the slow, obvious
way (web3's `get_logs`, row by row); the tests and the export benchmark compare this one with it.

A row's period is `1 + the number of PeriodClosed events in blocks <= the row's block`: a
period closed by a transaction in block `c` spans up to block `c - 1`, so everything in block
`c` belongs to the next period (the contract's `periodRange` agrees).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address

from medmeter.chain.ledger import bytes32_to_code
from medmeter.contract.facts import (
    INSTITUTION_REGISTERED_TOPIC,
    INTERACTION_RECORDED_TOPIC,
    KIND_WORDS,
    PERIOD_CLOSED_TOPIC,
    Kind,
)
from medmeter.errors import DecodeError
from medmeter.intake.categories import category_name

EXPORT_TOPICS = (INTERACTION_RECORDED_TOPIC, INSTITUTION_REGISTERED_TOPIC, PERIOD_CLOSED_TOPIC)

KIND_NAMES = pa.array(list(KIND_WORDS), pa.string())
# Data words of InteractionRecorded: kind, category, records, units, fee, dataHash, nonce.
_WORDS = 7
_W_KIND, _W_CATEGORY, _W_RECORDS, _W_UNITS, _W_FEE, _W_DATA_HASH, _W_NONCE = range(_WORDS)
_INT64_MAX = 2**63 - 1
# Log indexes are per block; packing (block, index) into one int64 needs room for any index.
_LOG_INDEX_SPAN = 2**24

# The dataset's columns, in order. Documented in README ("Exported interactions").
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("block_number", pa.int64(), nullable=False),
        pa.field("block_hash", pa.string(), nullable=False),
        pa.field("block_timestamp", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("tx_hash", pa.string(), nullable=False),
        pa.field("log_index", pa.int64(), nullable=False),
        pa.field("period", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("institution", pa.string(), nullable=False),
        pa.field("institution_code", pa.string()),
        pa.field("counterparty", pa.string()),
        pa.field("counterparty_code", pa.string()),
        pa.field("category", pa.int64(), nullable=False),
        pa.field("category_name", pa.string(), nullable=False),
        pa.field("records", pa.int64(), nullable=False),
        pa.field("units", pa.int64(), nullable=False),
        pa.field("fee", pa.int64(), nullable=False),
        pa.field("data_hash", pa.string(), nullable=False),
        pa.field("nonce", pa.string(), nullable=False),
    ]
)
INTERACTION_COLUMNS: tuple[str, ...] = tuple(INTERACTION_SCHEMA.names)


@dataclass(frozen=True)
class Registration:
    address: str
    code: str
    name: str
    credit_line: int
    block_number: int
    log_index: int


@dataclass(frozen=True)
class PeriodClose:
    period: int
    from_block: int
    to_block: int
    block_number: int  # the block of the closing transaction (= to_block + 1)


@dataclass
class DecodedInteractions:
    """Columns of `InteractionRecorded` logs, before periods, codes and timestamps are joined."""

    block_number: np.ndarray  # int64
    block_hash: pa.Array  # string
    log_timestamp: np.ndarray | None  # int64 seconds if every log carried `blockTimestamp`
    tx_hash: pa.Array
    log_index: np.ndarray  # int64
    institution: pa.Array  # checksummed address
    counterparty: pa.Array  # checksummed address, null for the platform (sync, fetch)
    kind: np.ndarray  # int64
    category: np.ndarray
    records: np.ndarray
    units: np.ndarray
    fee: np.ndarray
    data_hash: pa.Array
    nonce: pa.Array  # decimal text (nonces may use all 256 bits)

    def __len__(self) -> int:
        return len(self.block_number)


class _ChecksumCache(dict[str, str]):
    """lower-case hex (40 chars, no 0x) -> checksummed address; keccak once per distinct address."""

    def __missing__(self, key: str) -> str:
        value = to_checksum_address("0x" + key)
        self[key] = value
        return value


_CHECKSUMS = _ChecksumCache()
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def check_logs(logs: Sequence[dict[str, Any]], address: str, start: int, end: int) -> None:
    """Refuse an `eth_getLogs` answer that cannot be the ledger's: a log from another address, one
    marked removed, one outside the asked block range, or the same (block, log index) twice (the
    pair a transaction hash and log index name). A node that answers so is not one to settle against.

    Done column-wise over the distinct values, as the decoder works: a per-log Python loop would
    cost more than the decoding itself."""
    if not logs:
        return
    flags = {(log.get("address"), log.get("removed")) for log in logs}
    blocks = _hex_ints([log.get("blockNumber") or "-0x1" for log in logs])
    indexes = _hex_ints([log.get("logIndex") or "0x0" for log in logs])
    problem, culprit = None, None
    foreign = sorted({str(a) for a, _ in flags if str(a).lower() != address.lower()})
    if foreign:
        problem = f"comes from {foreign[0]}, not the ledger {address}"
        culprit = next(log for log in logs if str(log.get("address")) == foreign[0])
    elif any(removed is True for _, removed in flags):
        problem = "is marked removed (a reorged log)"
        culprit = next(log for log in logs if log.get("removed") is True)
    elif int(blocks.min()) < start or int(blocks.max()) > end:
        culprit = logs[int(np.flatnonzero((blocks < start) | (blocks > end))[0])]
        problem = f"is in block {culprit.get('blockNumber')}, outside the requested blocks {start}..{end}"
    else:
        positions = blocks * _LOG_INDEX_SPAN + indexes
        unique, first = np.unique(positions, return_index=True)
        if len(unique) != len(logs):
            duplicate = np.setdiff1d(np.arange(len(logs)), first)[0]
            culprit, problem = logs[int(duplicate)], "was returned twice"
    if problem and culprit is not None:
        raise DecodeError(
            f"the node's eth_getLogs answer for blocks {start}..{end} is not the ledger's: log "
            f"{culprit.get('logIndex')} of tx {culprit.get('transactionHash')} {problem}. Do not settle against "
            "this node: point --rpc-url at a node you trust, then run `medmeter export --restart`."
        )


def split_by_topic(logs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {topic: [] for topic in EXPORT_TOPICS}
    for log in logs:
        topics = log.get("topics") or []
        if topics and topics[0] in out:
            out[topics[0]].append(log)
    return out


def _hex_ints(values: list[str]) -> np.ndarray:
    """Hex quantities as int64; parsed once per distinct value (block numbers repeat a lot)."""
    encoded = pa.array(values, pa.string()).dictionary_encode()
    uniques = np.array([int(v, 16) for v in encoded.dictionary.to_pylist()], dtype=np.int64)
    return uniques[encoded.indices.to_numpy(zero_copy_only=False)]


def _addresses(topics: list[str], null_zero: bool) -> pa.Array:
    """Checksummed addresses from 32-byte topics, checksummed once per distinct value."""
    encoded = pa.array(topics, pa.string()).dictionary_encode()
    mapped = []
    for topic in encoded.dictionary.to_pylist():
        raw = topic[26:].lower()
        mapped.append(None if null_zero and int(raw, 16) == 0 else _CHECKSUMS[raw])
    return pa.array(mapped, pa.string()).take(encoded.indices)


def _hex_strings(rows: np.ndarray) -> pa.Array:
    """`0x`-prefixed lower-case hex of each row of a (n, k) uint8 array, without a Python loop."""
    n, k = rows.shape
    text = np.empty((n, 2 + 2 * k), dtype=np.uint8)
    text[:, 0], text[:, 1] = ord("0"), ord("x")
    text[:, 2::2] = _HEX_DIGITS[rows >> 4]
    text[:, 3::2] = _HEX_DIGITS[rows & 0x0F]
    offsets = np.arange(0, (n + 1) * (2 + 2 * k), 2 + 2 * k, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())])


def _hex_rows(text: bytes, n: int, width: int) -> np.ndarray:
    """`n` fixed-width `0x…` hex strings, concatenated, as an (n, (width - 2) / 2) uint8 array."""
    chars = np.frombuffer(text, dtype=np.uint8).reshape(n, width)
    if not ((chars[:, 0] == ord("0")) & (chars[:, 1] == ord("x"))).all():
        raise DecodeError("log data is not 0x-prefixed hex: the node's answer is malformed.")
    try:
        raw = binascii.unhexlify(np.ascontiguousarray(chars[:, 2:]).tobytes())
    except binascii.Error as exc:
        raise DecodeError(f"log data is not hex ({exc}): the node's answer is malformed.") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, (width - 2) // 2)


def _low_u64(words: np.ndarray, index: int) -> np.ndarray:
    """The low 8 bytes of word `index` of every row, as big-endian unsigned integers."""
    return np.ascontiguousarray(words[:, index, 24:]).view(">u8").ravel().astype(np.uint64)


def decode_interaction_logs(logs: Sequence[dict[str, Any]]) -> DecodedInteractions:
    """Vectorized decode of raw (JSON-RPC) `InteractionRecorded` logs."""
    n = len(logs)
    if n == 0:
        empty, text = np.zeros(0, dtype=np.int64), pa.array([], pa.string())
        return DecodedInteractions(
            empty, text, None, text, empty, text, text, empty, empty, empty, empty, empty, text, text
        )
    data = [log["data"] for log in logs]
    width = 2 + _WORDS * 64
    if any(len(d) != width for d in data):
        bad = next(i for i, d in enumerate(data) if len(d) != width)
        raise DecodeError(
            f"log {logs[bad]['transactionHash']}#{int(logs[bad]['logIndex'], 16)} has {len(data[bad])} characters "
            "of data, not an InteractionRecorded event: check the ledger address."
        )
    words = _hex_rows("".join(data).encode("ascii"), n, width).reshape(n, _WORDS, 32)

    # uint8/uint16/uint32 fields fit their low bytes by the ABI; units and fee must fit int64 for the
    # dataset, nonces may use all 256 bits (unordered nonces) and are kept as decimal strings.
    high = words[:, :, :24].any(axis=2)
    for index, name in ((_W_UNITS, "units"), (_W_FEE, "fee")):
        too_big = high[:, index] | (_low_u64(words, index) > _INT64_MAX)
        if too_big.any():
            row = int(np.argmax(too_big))
            raise DecodeError(
                f"{name} of log {logs[row]['transactionHash']} exceed 2**63-1, beyond what the dataset stores: "
                "this ledger's tariff is outside medmeter's supported range."
            )
    nonce = pa.array(_low_u64(words, _W_NONCE), pa.uint64()).cast(pa.string())
    big = np.flatnonzero(high[:, _W_NONCE])
    if len(big):
        values = nonce.to_pylist()
        for row in big:
            values[row] = str(int.from_bytes(words[row, _W_NONCE].tobytes(), "big"))
        nonce = pa.array(values, pa.string())

    topics = [log["topics"] for log in logs]
    log_timestamp = None
    if all("blockTimestamp" in log for log in logs):
        log_timestamp = _hex_ints([log["blockTimestamp"] for log in logs])
    return DecodedInteractions(
        block_number=_hex_ints([log["blockNumber"] for log in logs]),
        block_hash=pa.array([log["blockHash"] for log in logs], pa.string()),
        log_timestamp=log_timestamp,
        tx_hash=pa.array([log["transactionHash"] for log in logs], pa.string()),
        log_index=_hex_ints([log["logIndex"] for log in logs]),
        institution=_addresses([t[1] for t in topics], null_zero=False),
        counterparty=_addresses([t[2] for t in topics], null_zero=True),
        kind=_low_u64(words, _W_KIND).astype(np.int64),
        category=_low_u64(words, _W_CATEGORY).astype(np.int64),
        records=_low_u64(words, _W_RECORDS).astype(np.int64),
        units=_low_u64(words, _W_UNITS).astype(np.int64),
        fee=_low_u64(words, _W_FEE).astype(np.int64),
        data_hash=_hex_strings(np.ascontiguousarray(words[:, _W_DATA_HASH, :])),
        nonce=nonce,
    )


def decode_registration(log: dict[str, Any]) -> Registration:
    name, credit_line = abi_decode(["string", "uint256"], bytes.fromhex(log["data"][2:]))
    return Registration(
        address=_CHECKSUMS[log["topics"][1][26:].lower()],
        code=bytes32_to_code(bytes.fromhex(log["topics"][2][2:])),
        name=name,
        credit_line=int(credit_line),
        block_number=int(log["blockNumber"], 16),
        log_index=int(log["logIndex"], 16),
    )


def decode_period_close(log: dict[str, Any]) -> PeriodClose:
    from_block, to_block = abi_decode(["uint256", "uint256"], bytes.fromhex(log["data"][2:]))
    return PeriodClose(
        period=int(log["topics"][1], 16),
        from_block=int(from_block),
        to_block=int(to_block),
        block_number=int(log["blockNumber"], 16),
    )


def periods_of_blocks(block_numbers: np.ndarray, close_blocks: Sequence[int]) -> np.ndarray:
    """Period of each block: 1 + number of PeriodClosed events in blocks <= it."""
    closes = np.sort(np.asarray(close_blocks, dtype=np.int64))
    return np.searchsorted(closes, block_numbers, side="right").astype(np.int64) + 1


def _lookup(values: pa.Array, mapping: Mapping[str, str]) -> pa.Array:
    """`mapping[value]` (null if absent or null) for each value, looked up once per distinct value."""
    encoded = values.dictionary_encode()
    mapped = [None if v is None else mapping.get(v) for v in encoded.dictionary.to_pylist()]
    return pa.array(mapped, pa.string()).take(encoded.indices)


def interaction_table(
    decoded: DecodedInteractions,
    *,
    timestamps: Mapping[int, int] | None,
    close_blocks: Sequence[int],
    codes: Mapping[str, str],
) -> pa.Table:
    """The dataset rows of `decoded`, ordered by (block, log index).

    `timestamps` (block -> unix seconds) is needed unless every log carried `blockTimestamp`."""
    n = len(decoded)
    if n == 0:
        return INTERACTION_SCHEMA.empty_table()
    blocks = decoded.block_number
    if decoded.log_timestamp is not None:
        block_ts = decoded.log_timestamp
    else:
        if timestamps is None:
            raise ValueError("the logs carry no blockTimestamp: pass the block timestamps")
        unique, inverse = np.unique(blocks, return_inverse=True)
        block_ts = np.array([timestamps[int(b)] for b in unique], dtype=np.int64)[inverse]
    if int(decoded.kind.max()) > Kind.EXCHANGE:
        raise DecodeError("a log carries an unknown interaction kind: check the ledger address.")
    unique_categories, category_index = np.unique(decoded.category, return_inverse=True)
    category_names = pa.array([category_name(int(c)) for c in unique_categories], pa.string())
    table = pa.table(
        {
            "block_number": pa.array(blocks, pa.int64()),
            "block_hash": decoded.block_hash,
            "block_timestamp": pa.array(block_ts, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            "tx_hash": decoded.tx_hash,
            "log_index": pa.array(decoded.log_index, pa.int64()),
            "period": pa.array(periods_of_blocks(blocks, close_blocks), pa.int64()),
            "kind": KIND_NAMES.take(pa.array(decoded.kind)),
            "institution": decoded.institution,
            "institution_code": _lookup(decoded.institution, codes),
            "counterparty": decoded.counterparty,
            "counterparty_code": _lookup(decoded.counterparty, codes),
            "category": pa.array(decoded.category, pa.int64()),
            "category_name": category_names.take(pa.array(category_index)),
            "records": pa.array(decoded.records, pa.int64()),
            "units": pa.array(decoded.units, pa.int64()),
            "fee": pa.array(decoded.fee, pa.int64()),
            "data_hash": decoded.data_hash,
            "nonce": decoded.nonce,
        },
        schema=INTERACTION_SCHEMA,
    )
    order = np.lexsort((decoded.log_index, blocks))
    if not np.array_equal(order, np.arange(n)):
        table = table.take(pa.array(order))
    return table
