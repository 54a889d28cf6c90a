"""Verifiable settlement statements: the leaf encoding, anchoring the period's root, and checking a
statement against the chain without trusting whoever produced it.

Leaf of institution `i` in period `p` (identical in Solidity, see `verifySettlementRow`):

    keccak256(bytes.concat(keccak256(abi.encode(
        uint256 period, address institution, uint256 credited, uint256 debited,
        uint256 closingBalance, uint256 closingDebt, uint256 syncCount, uint256 fetchCount,
        uint256 exchangeInCount, uint256 exchangeOutCount))))

The period's leaves form an OpenZeppelin StandardMerkleTree (see `medmeter.statement.merkle`); its root is
anchored on chain with `anchorSettlement(period, root, institutionCount)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import is_address, keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import LEDGER_ID, REGISTRY_EVENT_NAMES
from medmeter.errors import StatementError
from medmeter.fileio import write_json_atomic
from medmeter.settlement.period import PeriodSettlement
from medmeter.statement.merkle import MerkleTree, process_proof

STATEMENT_FORMAT = "medmeter-settlement-statement/1"
# (field in the statement, Solidity name, ABI type), in leaf order.
LEAF_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("period", "period", "uint256"),
    ("institution", "institution", "address"),
    ("credited", "credited", "uint256"),
    ("debited", "debited", "uint256"),
    ("closing_balance", "closingBalance", "uint256"),
    ("closing_debt", "closingDebt", "uint256"),
    ("sync_count", "syncCount", "uint256"),
    ("fetch_count", "fetchCount", "uint256"),
    ("exchange_in_count", "exchangeInCount", "uint256"),
    ("exchange_out_count", "exchangeOutCount", "uint256"),
)
LEAF_TYPES = tuple(t for _, _, t in LEAF_FIELDS)
LEAF_ENCODING = (
    "keccak256(bytes.concat(keccak256(abi.encode(" + ", ".join(f"{t} {sol}" for _, sol, t in LEAF_FIELDS) + "))))"
)
# Settlement CSV column behind each leaf field.
CSV_COLUMN = {
    "period": "period",
    "institution": "institution",
    "credited": "credited_units",
    "debited": "debited_units",
    "closing_balance": "closing_balance",
    "closing_debt": "closing_debt",
    "sync_count": "sync_count",
    "fetch_count": "fetch_count",
    "exchange_in_count": "exchange_in_count",
    "exchange_out_count": "exchange_out_count",
}

# Only what verification needs, so that a verifier depends on nothing the analyst supplied.
_UINT = [{"name": "", "type": "uint256"}]
_ROW_ARG = {
    "name": "row",
    "type": "tuple",
    "internalType": "struct IMeteringLedger.SettlementRow",
    "components": [{"name": sol, "type": t} for _, sol, t in LEAF_FIELDS],
}
# The contract's `Counters` struct, in order (the settlement columns they total are in settlement.period).
COUNTER_COMPONENTS = [
    {"name": name, "type": "uint256"}
    for name in (
        "syncCount",
        "syncUnits",
        "fetchCount",
        "fetchUnits",
        "exchangeInCount",
        "exchangeInUnits",
        "exchangeOutCount",
        "exchangeOutUnits",
        "feeUnits",
    )
]
VERIFIER_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "verifySettlementRowAt",
        "stateMutability": "view",
        "inputs": [_ROW_ARG, {"name": "version", "type": "uint256"}, {"name": "proof", "type": "bytes32[]"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "settlementStatus",
        "stateMutability": "view",
        "inputs": [{"name": "period", "type": "uint256"}],
        "outputs": [
            {"name": "version", "type": "uint256"},
            {"name": "root", "type": "bytes32"},
            {"name": "isFinal", "type": "bool"},
        ],
    },
    {
        "type": "function",
        "name": "countersOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [
            {
                "name": "counters",
                "type": "tuple",
                "internalType": "struct IMeteringLedger.Counters",
                "components": COUNTER_COMPONENTS,
            }
        ],
    },
    {
        "type": "function",
        "name": "institution",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [
            {"name": "code", "type": "bytes32"},
            {"name": "displayName", "type": "string"},
            {"name": "signer", "type": "address"},
            {"name": "status", "type": "uint8"},
            {"name": "creditLine", "type": "uint256"},
        ],
    },
    {
        "type": "function",
        "name": "pendingRecovery",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "newSigner", "type": "address"}, {"name": "readyAt", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "verifySettlementRow",
        "stateMutability": "view",
        "inputs": [
            {
                "name": "row",
                "type": "tuple",
                "internalType": "struct MeteringLedger.SettlementRow",
                "components": [{"name": sol, "type": t} for _, sol, t in LEAF_FIELDS],
            },
            {"name": "proof", "type": "bytes32[]"},
        ],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "settlementRoot",
        "stateMutability": "view",
        "inputs": [{"name": "period", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
    {
        "type": "function",
        "name": "periodRange",
        "stateMutability": "view",
        "inputs": [{"name": "period", "type": "uint256"}],
        "outputs": [{"name": "fromBlock", "type": "uint256"}, {"name": "toBlock", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "LEDGER_ID",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": _UINT,
    },
    {
        "type": "function",
        "name": "debtOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": _UINT,
    },
]


# ---------------------------------------------------------------------------------- the leaf


@dataclass(frozen=True)
class SettlementLeaf:
    period: int
    institution: str
    credited: int
    debited: int
    closing_balance: int
    closing_debt: int
    sync_count: int
    fetch_count: int
    exchange_in_count: int
    exchange_out_count: int

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _, _ in LEAF_FIELDS)

    def encoded(self) -> bytes:
        return abi_encode(list(LEAF_TYPES), list(self.values()))

    def hash(self) -> bytes:
        return keccak(keccak(self.encoded()))

    def as_contract_arg(self) -> tuple[Any, ...]:
        return self.values()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SettlementLeaf:
        if not isinstance(data, dict):
            raise StatementError("the statement's `row` is not an object")
        values: dict[str, Any] = {}
        for name, _, abi_type in LEAF_FIELDS:
            if name not in data:
                raise StatementError(f"the statement's `row` has no field {name!r}")
            value = data[name]
            if abi_type == "address":
                if not isinstance(value, str) or not is_address(value):
                    raise StatementError(f"row.{name} is not an address: {value!r}")
                values[name] = to_checksum_address(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
                    raise StatementError(f"row.{name} is not an unsigned integer: {value!r}")
                values[name] = value
        return cls(**values)

    @classmethod
    def from_settlement_row(cls, row: Any) -> SettlementLeaf:
        return cls(
            **{
                name: (to_checksum_address(row[CSV_COLUMN[name]]) if t == "address" else int(row[CSV_COLUMN[name]]))
                for name, _, t in LEAF_FIELDS
            }
        )


def settlement_leaves(settlement: PeriodSettlement) -> list[SettlementLeaf]:
    return [SettlementLeaf.from_settlement_row(row) for _, row in settlement.rows.iterrows()]


def settlement_tree(settlement: PeriodSettlement) -> tuple[list[SettlementLeaf], MerkleTree]:
    leaves = settlement_leaves(settlement)
    if not leaves:
        raise StatementError(
            f"period {settlement.period} has no registered institutions, so there is nothing to anchor."
        )
    return leaves, MerkleTree([leaf.hash() for leaf in leaves])


def hex32(value: bytes) -> str:
    return "0x" + value.hex()


def _bytes32(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"0x[0-9a-fA-F]{64}", value):
        raise StatementError(f"{what} is not a 32-byte hex string: {value!r}")
    return bytes.fromhex(value[2:])


# ---------------------------------------------------------------------------------- anchoring


@dataclass(frozen=True)
class AnchorResult:
    period: int
    root: str
    institution_count: int
    tx_hash: str | None  # None when the same root was already anchored


def anchor_settlement(
    ledger: Ledger, settlement: PeriodSettlement, *, supersede_reason: str | None = None
) -> AnchorResult:
    """Anchor the period's root (settler role): version 1, final after the ledger's dispute window.
    Idempotent for the same root. A different root replaces the anchored one only with a published
    `supersede_reason` (its keccak256 goes on chain), and only before the anchored one is final."""
    leaves, tree = settlement_tree(settlement)
    root = tree.root
    _version, existing, is_final = ledger.call(ledger.contract.functions.settlementStatus(settlement.period))
    existing = bytes(existing)
    if existing == root:
        return AnchorResult(settlement.period, hex32(root), len(leaves), None)
    if existing != b"\0" * 32:
        if supersede_reason is None:
            raise StatementError(
                f"period {settlement.period} is already anchored with root {hex32(existing)}, but these settlement "
                f"rows give {hex32(root)}: the rows differ from the ones anchored. Re-export with `medmeter export "
                "--restart` and compare; if the anchored root is wrong, replace it before it is final with "
                "`medmeter anchor --supersede --reason TEXT`."
                + (" It is already final and can no longer be replaced." if is_final else "")
            )
        receipt = ledger.transact(
            ledger.contract.functions.supersedeSettlement(
                settlement.period, root, len(leaves), keccak(text=supersede_reason)
            )
        )
        return AnchorResult(settlement.period, hex32(root), len(leaves), receipt["transactionHash"].to_0x_hex())
    receipt = ledger.anchor_settlement(settlement.period, root, len(leaves))
    return AnchorResult(settlement.period, hex32(root), len(leaves), receipt["transactionHash"].to_0x_hex())


# ---------------------------------------------------------------------------------- statements


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def build_statements(settlement: PeriodSettlement, ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Every institution's statement for the period, by address; the root must already be anchored."""
    leaves, tree = settlement_tree(settlement)
    version, anchored, _final = ledger.call(ledger.contract.functions.settlementStatus(settlement.period))
    anchored = bytes(anchored)
    if anchored == b"\0" * 32:
        raise StatementError(
            f"period {settlement.period} has no anchored settlement root: anchor it first with "
            f"`medmeter anchor --period {settlement.period}` (settler role)."
        )
    if anchored != tree.root:
        raise StatementError(
            f"period {settlement.period} is anchored with root {hex32(anchored)}, but these settlement rows give "
            f"{hex32(tree.root)}: statements would not verify. Re-export with `medmeter export --restart` and retry."
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report_rows = {row["institution"]: row for row in settlement.rows.to_dict("records")}
    statements = {}
    for leaf in leaves:
        leaf_hash = leaf.hash()
        statements[leaf.institution] = {
            "format": STATEMENT_FORMAT,
            "chain_id": ledger.deployment.chain_id,
            "ledger": ledger.address,
            "period": settlement.period,
            "from_block": settlement.info.from_block,
            "to_block": settlement.info.to_block,
            "code": report_rows[leaf.institution]["code"],
            "name": report_rows[leaf.institution]["name"],
            "row": leaf.to_json(),
            "leaf_encoding": LEAF_ENCODING,
            "leaf": hex32(leaf_hash),
            "proof": [hex32(p) for p in tree.proof(leaf_hash)],
            "root": hex32(tree.root),
            "institution_count": len(leaves),
            "settlement_version": version,
            "report_row": {k: _plain(v) for k, v in report_rows[leaf.institution].items()},
            "generated_at": generated,
            "verify_with": (
                f"medmeter verify-statement <this file> --rpc-url <a node of chain {ledger.deployment.chain_id}> "
                f"--ledger {ledger.address}"
            ),
        }
    return statements


def statement_path(statements_dir: Path, period: int, code: str, address: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", code).strip("._") or "institution"
    return statements_dir / f"statement-{period}-{safe}-{address[2:10].lower()}.json"


def write_statement(statement: dict[str, Any], path: Path) -> Path:
    write_json_atomic(path, statement)
    return path


# ---------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verification:
    statement: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    final: bool = False  # the anchored version is past its dispute window
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def load_statement(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatementError(f"cannot read {path} as JSON ({exc}): pass the file `medmeter statement` wrote.") from None
    if not isinstance(data, dict) or data.get("format") != STATEMENT_FORMAT:
        raise StatementError(
            f"{path} is not a medmeter settlement statement (format {STATEMENT_FORMAT!r} expected): pass the file "
            "`medmeter statement` wrote."
        )
    return data


def verify_statement(w3: Web3, statement: dict[str, Any], expected_ledger: str | None = None) -> Verification:
    """Check a statement in Python and against the chain. A failed check is recorded (see `.ok`); a malformed
    statement or an unreachable node raises `StatementError`."""
    result = Verification(statement)
    try:
        leaf = SettlementLeaf.from_json(statement.get("row"))
        claimed_leaf = _bytes32(statement.get("leaf"), "leaf")
        root = _bytes32(statement.get("root"), "root")
        proof_value = statement.get("proof")
        if not isinstance(proof_value, list):
            raise StatementError("proof is not a list")
        proof = [_bytes32(p, f"proof[{i}]") for i, p in enumerate(proof_value)]
        chain_id = statement.get("chain_id")
        ledger_address = statement.get("ledger")
        if not isinstance(chain_id, int) or not isinstance(ledger_address, str) or not is_address(ledger_address):
            raise StatementError("chain_id or ledger is missing or malformed")
        ledger_address = to_checksum_address(ledger_address)
        period = leaf.period
        if statement.get("period") != period:
            raise StatementError(f"the statement's period {statement.get('period')!r} differs from row.period {period}")
    except StatementError as exc:
        raise StatementError(
            f"the statement is malformed: {exc}; ask for the file `medmeter statement` wrote."
        ) from None

    # 1-2: pure recomputation, no chain needed.
    computed_leaf = leaf.hash()
    result.add(
        "leaf",
        computed_leaf == claimed_leaf,
        f"the row hashes to leaf {hex32(computed_leaf)}"
        + ("" if computed_leaf == claimed_leaf else f", not the statement's {hex32(claimed_leaf)}"),
    )
    computed_root = process_proof(proof, computed_leaf)
    result.add(
        "proof",
        computed_root == root,
        f"the proof ({len(proof)} hashes) leads from the row to root {hex32(computed_root)}"
        + ("" if computed_root == root else f", not the statement's root {hex32(root)}"),
    )
    report_row = statement.get("report_row")
    if isinstance(report_row, dict):
        mismatched = [
            name
            for name, column in CSV_COLUMN.items()
            if column in report_row and str(report_row[column]).lower() != str(getattr(leaf, name)).lower()
        ]
        result.add(
            "report row",
            not mismatched,
            "the informational report row agrees with the proven row"
            if not mismatched
            else f"the report row differs from the proven row in {', '.join(mismatched)}",
        )
    if expected_ledger is not None:
        same = expected_ledger.lower() == ledger_address.lower()
        result.add("ledger", same, f"statement names ledger {ledger_address}, expected {expected_ledger}")

    try:
        _verify_on_chain(w3, result, leaf, proof, root, chain_id, ledger_address)
    except (Web3Exception, OSError) as exc:
        raise StatementError(
            f"could not read the ledger from the node ({type(exc).__name__}: {exc}): point --rpc-url at a node of "
            f"chain {chain_id} that keeps historical state, then verify again."
        ) from exc
    return result


def _verify_on_chain(
    w3: Web3,
    result: Verification,
    leaf: SettlementLeaf,
    proof: list[bytes],
    root: bytes,
    chain_id: int,
    ledger_address: str,
) -> None:
    """The chain's side, through a minimal ABI of our own (nothing from the analyst's files)."""
    statement = result.statement
    period = leaf.period
    node_chain = w3.eth.chain_id
    result.add("chain", node_chain == chain_id, f"the node is chain {node_chain}, the statement names chain {chain_id}")
    if node_chain != chain_id:
        return
    contract = w3.eth.contract(address=ledger_address, abi=VERIFIER_ABI)
    try:
        is_ledger = len(w3.eth.get_code(ledger_address)) > 0 and contract.functions.LEDGER_ID().call() == LEDGER_ID
    except (ContractCustomError, ContractLogicError, Web3Exception, ValueError):
        is_ledger = False
    result.add("contract", is_ledger, f"{ledger_address} {'is' if is_ledger else 'is not'} a MeteringLedger v2")
    if not is_ledger:
        return
    latest, anchored, is_final = contract.functions.settlementStatus(period).call()
    anchored = bytes(anchored)
    version = statement.get("settlement_version", latest)
    result.add(
        "anchored root",
        anchored == root and version == latest,
        f"the latest root anchored for period {period} is version {latest}, {hex32(anchored)}"
        + ("" if anchored == root else f", not the statement's {hex32(root)}")
        + ("" if version == latest else f"; the statement is of version {version}, since superseded"),
    )
    result.final = bool(is_final)
    view_ok = bool(
        contract.functions.verifySettlementRowAt(
            leaf.as_contract_arg(), int(version) if isinstance(version, int) else 0, proof
        ).call()
    )
    result.add(
        "contract view",
        view_ok,
        f"verifySettlementRowAt(row, {version}, proof) on chain returned {str(view_ok).lower()}",
    )
    try:
        from_block, to_block = contract.functions.periodRange(period).call()
    except (ContractCustomError, ContractLogicError):
        result.add("period", False, f"period {period} is not closed on chain")
        return
    claimed_range = (statement.get("from_block"), statement.get("to_block"))
    result.add(
        "period",
        claimed_range == (from_block, to_block),
        f"period {period} is blocks {from_block}..{to_block} on chain"
        + (
            ""
            if claimed_range == (from_block, to_block)
            else f", the statement says {claimed_range[0]}..{claimed_range[1]}"
        ),
    )
    balance = contract.functions.balanceOf(leaf.institution).call(block_identifier=to_block)
    debt = contract.functions.debtOf(leaf.institution).call(block_identifier=to_block)
    same_position = (balance, debt) == (leaf.closing_balance, leaf.closing_debt)
    result.add(
        "closing position",
        same_position,
        f"at block {to_block} the contract holds balance {balance} and debt {debt}"
        + ("" if same_position else f", the row says {leaf.closing_balance} and {leaf.closing_debt}"),
    )
    _verify_figures(contract, result, leaf, from_block, to_block)


def _deployed_at(contract: Any, block: int) -> bool:
    """Before its deployment block the ledger has no code: nothing was counted or held yet."""
    return block >= 0 and len(contract.w3.eth.get_code(contract.address, block_identifier=block)) > 0


def _counters(contract: Any, address: str, block: int) -> dict[str, int]:
    if not _deployed_at(contract, block):
        return {c["name"]: 0 for c in COUNTER_COMPONENTS}
    values = contract.functions.countersOf(address).call(block_identifier=block)
    return {c["name"]: int(v) for c, v in zip(COUNTER_COMPONENTS, values, strict=True)}


# Every figure a statement shows, as the chain proves it: settlement column -> value from the
# period's counters (closing minus opening) and positions.
def _proven_figures(contract: Any, address: str, from_block: int, to_block: int) -> dict[str, int]:
    opening, closing = _counters(contract, address, from_block - 1), _counters(contract, address, to_block)
    delta = {name: closing[name] - opening[name] for name in closing}
    figures = {
        "sync_count": delta["syncCount"],
        "sync_units": delta["syncUnits"],
        "fetch_count": delta["fetchCount"],
        "fetch_units": delta["fetchUnits"],
        "exchange_in_count": delta["exchangeInCount"],
        "exchange_in_units": delta["exchangeInUnits"],
        "exchange_out_count": delta["exchangeOutCount"],
        "exchange_out_units": delta["exchangeOutUnits"],
        "fee_units": delta["feeUnits"],
    }
    figures["credited_units"] = figures["sync_units"] + figures["exchange_in_units"]
    figures["debited_units"] = figures["fetch_units"] + figures["exchange_out_units"]
    figures["net_units"] = figures["credited_units"] - figures["debited_units"]
    figures["opening_balance"] = figures["opening_debt"] = 0
    if _deployed_at(contract, from_block - 1):
        figures["opening_balance"] = int(contract.functions.balanceOf(address).call(block_identifier=from_block - 1))
        figures["opening_debt"] = int(contract.functions.debtOf(address).call(block_identifier=from_block - 1))
    figures["closing_balance"] = int(contract.functions.balanceOf(address).call(block_identifier=to_block))
    figures["closing_debt"] = int(contract.functions.debtOf(address).call(block_identifier=to_block))
    return figures


def _verify_figures(contract: Any, result: Verification, leaf: SettlementLeaf, from_block: int, to_block: int) -> None:
    """Every figure the statement shows (the proven row and the report row) against the chain's own
    counters and positions, and its code and name against the registry at the period's end."""
    statement = result.statement
    proven = _proven_figures(contract, leaf.institution, from_block, to_block)
    shown: dict[str, Any] = {CSV_COLUMN[name]: getattr(leaf, name) for name in CSV_COLUMN}
    report_row = statement.get("report_row")
    if isinstance(report_row, dict):
        shown |= {k: v for k, v in report_row.items() if k in proven}
    wrong = []
    for column, value in shown.items():
        if column in proven and str(value) != str(proven[column]):
            wrong.append(f"{column} {value} (the chain's counters give {proven[column]})")
    result.add(
        "figures",
        not wrong,
        f"{len([c for c in shown if c in proven])} figures agree with the chain's counters and positions"
        if not wrong
        else "these figures differ from the chain: " + "; ".join(wrong),
    )
    code, name, _signer, _status, _line = contract.functions.institution(leaf.institution).call(
        block_identifier=to_block
    )
    code_text = bytes(code).rstrip(b"\0").decode("utf-8", errors="replace")
    same = (statement.get("code"), statement.get("name")) == (code_text, name)
    result.add(
        "registry",
        same,
        f"the registry names {leaf.institution} {code_text} ({name}) at block {to_block}"
        + ("" if same else f", the statement says {statement.get('code')} ({statement.get('name')})"),
    )
    for line in _registry_changes(contract, leaf.institution, from_block, to_block):
        result.notes.append(f"in the period: {line}")
    new_signer, ready_at = contract.functions.pendingRecovery(leaf.institution).call()
    if int(new_signer, 16):
        result.notes.append(
            f"a recovery of this institution's key to {new_signer} is pending (effective from {ready_at}): if the "
            "institution did not ask for it, cancel it with `medmeter institution recover cancel`"
        )


def _registry_changes(contract: Any, institution: str, from_block: int, to_block: int) -> list[str]:
    """What happened to the institution's registration in the blocks (key changes, recoveries,
    suspensions, credit-line changes, cancelled nonces), from the ledger's own events."""
    logs = contract.w3.eth.get_logs(
        {
            "address": contract.address,
            "fromBlock": max(from_block, 0),
            "toBlock": to_block,
            "topics": [list(REGISTRY_EVENT_NAMES), "0x" + bytes.fromhex(institution[2:]).rjust(32, b"\0").hex()],
        }
    )
    return [
        f"block {log['blockNumber']}: {REGISTRY_EVENT_NAMES['0x' + bytes(log['topics'][0]).hex()]} "
        f"(tx {bytes(log['transactionHash']).hex()[:16]}...)"
        for log in logs
    ]


def failure_sentence(verification: Verification, path: Path | str) -> str:
    failed = verification.failures()
    reasons = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    return (
        f"statement {path} does NOT verify ({len(failed)} of {len(verification.checks)} checks failed: {reasons}). "
        "Do not rely on it: ask the platform's analyst for a statement that matches the anchored settlement."
    )


def write_statements(
    settlement: PeriodSettlement, ledger: Ledger, statements_dir: Path, only: str | None = None
) -> list[Path]:
    """Write the period's statements (all institutions, or only the address `only`)."""
    statements = build_statements(settlement, ledger)
    if only is not None:
        if only not in statements:
            raise StatementError(
                f"{only} has no row in period {settlement.period}'s settlement: it was not registered by block "
                f"{settlement.info.to_block}."
            )
        statements = {only: statements[only]}
    paths = []
    for address, statement in statements.items():
        paths.append(
            write_statement(statement, statement_path(statements_dir, settlement.period, statement["code"], address))
        )
    return paths
