"""An institution's own audit: what it signed (its receipts, the JSON lines it produced) against
what the chain recorded for it, and every change to its registration.

The institution trusts only its receipts and the chain. A recorded interaction is matched to a
receipt by (institution, nonce), the pair the contract lets through once; then every signed field
must agree. Each finding says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from medmeter.chain.ledger import Ledger, RegistryEvent
from medmeter.signing.interaction import ZERO_ADDRESS, SignedInteraction

# Columns of the export the audit compares with a receipt.
AUDIT_COLUMNS = (
    "block_number",
    "tx_hash",
    "log_index",
    "kind",
    "institution",
    "counterparty",
    "category",
    "records",
    "units",
    "fee",
    "data_hash",
    "nonce",
)
# Signed field of a receipt -> exported column holding the same value.
COMPARED = {
    "kind": "kind",
    "counterparty": "counterparty",
    "category": "category",
    "records": "records",
    "units": "units",
    "data_hash": "data_hash",
}


@dataclass(frozen=True)
class Finding:
    discrepancy: bool  # False: worth knowing, nothing wrong
    subject: str
    detail: str


@dataclass
class AuditReport:
    institution: str
    head_block: int
    receipts: int
    recorded: int
    matched: int
    findings: list[Finding] = field(default_factory=list)
    registry: list[RegistryEvent] = field(default_factory=list)

    @property
    def discrepancies(self) -> list[Finding]:
        return [f for f in self.findings if f.discrepancy]

    def lines(self) -> list[str]:
        out = [
            f"audit of {self.institution} at block {self.head_block}: {self.receipts} signed receipt(s), "
            f"{self.recorded} interaction(s) recorded as signed by it, {self.matched} match field for field",
        ]
        for finding in self.findings:
            out.append(f"{'DISCREPANCY' if finding.discrepancy else 'note'}: {finding.subject}: {finding.detail}")
        out.append(f"registry changes ({len(self.registry)}):")
        out.extend(f"  {event.describe()}" for event in self.registry)
        verdict = (
            "no discrepancy: every recorded interaction is one you signed, with the fields you signed"
            if not self.discrepancies
            else f"{len(self.discrepancies)} discrepancy(ies): dispute them with the platform (see each line)"
        )
        out.append(verdict)
        return out


def _exported_value(row: pd.Series, column: str) -> object:
    value = row[column]
    if column == "counterparty" and (value is None or (isinstance(value, float) and pd.isna(value))):
        return ZERO_ADDRESS
    if column in ("category", "records", "units"):
        return int(value)
    if isinstance(value, str):
        return value.lower()
    return value


def _signed_value(item: SignedInteraction, name: str) -> object:
    value = getattr(item.interaction, name)
    if name == "kind":
        return value.word
    if isinstance(value, str):
        return value.lower()
    return int(value)


def audit(
    ledger: Ledger,
    institution: str,
    receipts: Sequence[SignedInteraction],
    recorded: pd.DataFrame,
    head_block: int,
    head_time: int,
) -> AuditReport:
    """Compare `receipts` with the `recorded` export rows where `institution` signed (`AUDIT_COLUMNS`)."""
    own = recorded[recorded["institution"] == institution]
    report = AuditReport(institution, head_block, len(receipts), len(own), 0)
    by_nonce: dict[int, SignedInteraction] = {}
    for item in receipts:
        if item.interaction.institution != institution:
            report.findings.append(
                Finding(
                    False,
                    f"receipt nonce {item.interaction.nonce}",
                    f"is for {item.interaction.institution}, not this institution: left out",
                )
            )
            continue
        if item.domain != ledger.domain:
            report.findings.append(
                Finding(
                    False,
                    f"receipt nonce {item.interaction.nonce}",
                    f"was signed for ledger {item.domain.verifying_contract} on chain {item.domain.chain_id}: left out",
                )
            )
            continue
        earlier = by_nonce.get(item.interaction.nonce)
        if earlier is not None and earlier.interaction != item.interaction:
            report.findings.append(
                Finding(
                    True,
                    f"nonce {item.interaction.nonce}",
                    "your receipts hold two different interactions under this nonce: only one can ever be recorded",
                )
            )
        by_nonce[item.interaction.nonce] = item

    seen: set[int] = set()
    for _, row in own.iterrows():
        nonce = int(row["nonce"])
        seen.add(nonce)
        where = f"tx {row['tx_hash']} log {row['log_index']} (block {row['block_number']}, nonce {nonce})"
        item = by_nonce.get(nonce)
        if item is None:
            report.findings.append(
                Finding(
                    True,
                    where,
                    f"a {row['kind']} of {int(row['units'])} units was recorded as signed by you, but no receipt of "
                    "yours has this nonce: if you did not sign it, your key (or a recovery) was used without you; "
                    "dispute it (`medmeter dispute`) and rotate your key",
                )
            )
            continue
        differing = [
            f"{name} signed {_signed_value(item, name)!s}, recorded {_exported_value(row, column)!s}"
            for name, column in COMPARED.items()
            if _signed_value(item, name) != _exported_value(row, column)
        ]
        if differing:
            report.findings.append(
                Finding(True, where, "recorded fields differ from your receipt: " + "; ".join(differing))
            )
        else:
            report.matched += 1

    for nonce, item in sorted(by_nonce.items()):
        if nonce in seen:
            continue
        used = bool(ledger.call(ledger.contract.functions.isNonceUsed(institution, nonce), head_block))
        subject = f"receipt nonce {nonce} ({item.interaction.kind.word}, {item.interaction.units} units)"
        if used:
            report.findings.append(
                Finding(
                    False,
                    subject,
                    "not recorded, and its nonce is used up (cancelled, or taken before this export's range): it can "
                    "never be recorded",
                )
            )
        elif item.interaction.deadline > head_time:
            report.findings.append(
                Finding(
                    False,
                    subject,
                    f"not recorded yet; it can still be relayed until its deadline {item.interaction.deadline}, or "
                    f"cancelled with `medmeter cancel --nonce {nonce}`",
                )
            )
        else:
            report.findings.append(
                Finding(False, subject, f"not recorded and expired at {item.interaction.deadline}: it never will be")
            )
    report.registry = ledger.registry_history(institution, ledger.deployment.block, head_block)
    return report
