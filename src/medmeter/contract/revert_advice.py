"""Decoding the ledger's custom errors into sentences a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from medmeter.contract.facts import INSTITUTION_STATUS_NAMES, Kind
from medmeter.errors import LedgerRevertError

STATUS_NAMES = INSTITUTION_STATUS_NAMES
KIND_NAMES = {kind.value: kind.word for kind in Kind}

# What to do about each refusal. `{field}` placeholders are the error's own arguments.
ADVICE: dict[str, str] = {
    "AccessControlUnauthorizedAccount": "account {account} lacks role {neededRole}: ask the ledger admin to grant it "
    "(`medmeter roles grant`) or use the operator keystore that holds it.",
    "AccessControlBadConfirmation": "renouncing a role needs the renouncing account itself as the confirmation: "
    "call renounceRole from the account that holds the role.",
    "SafeCastOverflowedUintDowncast": "a value of {value} does not fit in {bits} bits: give a smaller figure.",
    "StringTooLong": "the text {str} is too long for a short string: give a shorter one.",
    "InvalidShortString": "a stored short string is malformed: report this ledger to its maintainers.",
    "EnforcedPause": "the ledger is paused: ask the pauser to run `medmeter unpause` once it is safe.",
    "ExpectedPause": "the ledger is not paused.",
    "InvalidInstitutionAddress": "{institution} is not a valid institution address: use the institution's wallet.",
    "InvalidInstitutionCode": "the institution code is empty: give the institution's official code.",
    "InstitutionAlreadyRegistered": "{institution} is already registered: nothing to do, or register another wallet.",
    "InstitutionCodeTaken": "code {code} already belongs to {holder}: check the code.",
    "SignerAlreadyInUse": "{signer} already signs for {institution}: use a fresh wallet.",
    "InstitutionNotRegistered": "{institution} is not a registered institution: register it first "
    "(`medmeter institution register`).",
    "InstitutionNotActive": "institution {institution} is {status}: reinstate it (`medmeter institution reinstate`) "
    "before relaying its interactions.",
    "InstitutionStatusUnchanged": "institution {institution} is already {status}.",
    "UnknownInteractionKind": "interaction kind {kind} is unknown: use 0 (sync), 1 (fetch) or 2 (exchange).",
    "InvalidCounterparty": "a {kind} by {institution} cannot have counterparty {counterparty}: sync and fetch name "
    "no counterparty, an exchange names another registered institution.",
    "UnknownCategory": "category {category} has no tariff: set one with `medmeter tariff set`.",
    "RecordsOutOfRange": "record count {records} is outside 1..{max}: split the payload into smaller interactions.",
    "InteractionExpired": "the interaction's deadline {deadline} passed (block time {blockTimestamp}): "
    "have the institution sign it again.",
    "NonceAlreadyUsed": "nonce {nonce} of {institution} was already used: this interaction is already recorded, "
    "or the institution must sign with a fresh nonce.",
    "InvalidSigner": "the signature recovers to {recovered}, not {expected}, the signer of {institution}: it was "
    "signed by another key, for another chain or ledger, or its fields changed after signing.",
    "ECDSAInvalidSignature": "the signature is not a valid secp256k1 signature: have the institution sign again.",
    "ECDSAInvalidSignatureS": "the signature has a high s value (malleable form): have the institution sign again.",
    "ECDSAInvalidSignatureLength": "the signature has the wrong length: have the institution sign again.",
    "CreditLineExceeded": "institution {institution} cannot be debited {debit} units: balance {balance}, debt {debt}, "
    "credit line {creditLine}. Raise its credit line (`medmeter institution credit-line`) or wait for credits.",
    "PlatformFeeOutOfRange": "a platform fee of {feeBps} bps is above {max}: give at most 10000.",
    "BatchSizeOutOfRange": "a batch of {size} is outside 1..{max}: use a smaller --batch-size.",
    "PeriodHasNoBlocks": "period {period} started at block {startBlock} and has no blocks yet: close it later.",
    "PeriodNotClosed": "period {period} is not closed (the open period is {currentPeriod}): close it first "
    "(`medmeter period close`) or pick a closed period.",
    "SettlementAlreadyAnchored": "period {period} already has settlement root {root} (version {version}): "
    "statements use that root; a wrong one is replaced with `medmeter anchor --supersede` before it is final.",
    "InvalidSettlementRoot": "the settlement root of period {period} is empty.",
    "RateOutOfRange": "a rate of {unitsPerRecord} units per record is above {max}: give a smaller rate.",
    "AccessControlEnforcedDefaultAdminDelay": "the admin change is scheduled and takes effect at {schedule}: "
    "wait for it, then accept it.",
    "AccessControlEnforcedDefaultAdminRules": "the admin role moves only in two steps (begin, then accept after the "
    "delay); it cannot be granted, revoked or renounced directly.",
    "AccessControlInvalidDefaultAdmin": "{defaultAdmin} is not the pending admin: accept the transfer from the "
    "account it was begun for.",
    "AlreadyReversed": "interaction {originalDigest} already has a reversal: nothing more to do.",
    "CountersOverflow": "a cumulative counter of {institution} would overflow: report this ledger to its maintainers.",
    "DelayOutOfRange": "{name} of {value} s is outside {min}..{max} s: pick a delay in that range.",
    "EmptyNonceMask": "nothing to cancel in nonce word {wordIndex} of {institution}: name at least one nonce.",
    "ExtensionCalledDirectly": "the ledger's extension was called at its own address: call the ledger's address.",
    "InvalidMessageSigner": "the message for {institution} is signed by {recovered}, not its signer {expected}: have "
    "the institution sign it with its current key.",
    "InvalidPossessionProof": "the new key {newSigner}'s proof is signed by {recovered}: the new key itself must sign "
    "its acceptance.",
    "InvalidRegistrationSigner": "the registration consent recovers to {recovered}, not {institution}: the "
    "institution must sign its own consent (`medmeter consent`) with the key being registered.",
    "InvalidRegistryNonce": "registry nonce {given} of {institution} is stale (the ledger expects {expected}): sign "
    "the rotation or cancellation again.",
    "InvalidSignerAddress": "{signer} cannot be a signer key (zero, or an institution's address): use a fresh key.",
    "MessageAlreadyUsed": "this signed message ({digest}) was already submitted: nothing to do.",
    "NoRecoveryPending": "{institution} has no pending key recovery.",
    "NotInstitutionSigner": "{caller} is not the signer {signer} of {institution}: call from the institution's "
    "current key, or submit a message it signed.",
    "PeriodNotStarted": "period {period} is not open (the open period is {currentPeriod}).",
    "RecoveryAlreadyPending": "a recovery of {institution} to {newSigner} is already pending until {readyAt}: "
    "complete or cancel it first (`medmeter institution recover`).",
    "RecoveryNotReady": "the recovery of {institution} takes effect at {readyAt} (now {blockTimestamp}): wait, "
    "then complete it (`medmeter institution recover`).",
    "SettlementAlreadyFinal": "version {version} of period {period}'s settlement became final at {finalAt}: a final "
    "root cannot be replaced; record reversals for the next period instead.",
    "SettlementNotAnchored": "period {period} has no settlement root yet: anchor it first (`medmeter anchor`).",
    "SettlementRowCountMismatch": "the root covers {rowCount} rows but period {period} closed with "
    "{institutionCount} institutions: settle every institution registered by then.",
    "SignatureExpired": "the signed message expired at {deadline} (block time {blockTimestamp}): sign it again.",
    "SupersedeReasonMissing": "superseding period {period}'s root needs a reason: pass --reason with the published "
    "explanation.",
    "TooManyScheduledRates": "at most {max} rates can be scheduled for the next period: close the period first.",
    "UnitsMismatch": "interaction {nonce} of {institution} was signed for {signedUnits} units but the tariff now "
    "gives {computedUnits}: the tariff changed after signing; have the institution sign again at the current "
    "price (`medmeter sign`).",
    "UnknownSettlementVersion": "period {period} has no settlement version {version} (the latest is {latest}).",
    "UnitsNotTransferable": "metering units cannot be transferred or approved: they move only through "
    "recorded interactions.",
}


@dataclass(frozen=True)
class ErrorSpec:
    name: str
    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]


class ErrorDecoder:
    """Maps revert data to the ABI's custom errors."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        self._by_selector: dict[bytes, ErrorSpec] = {}
        for item in abi:
            if item.get("type") != "error":
                continue
            types = tuple(i["type"] for i in item["inputs"])
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            self._by_selector[selector] = ErrorSpec(item["name"], tuple(i["name"] for i in item["inputs"]), types)

    def decode(self, data: bytes | str) -> LedgerRevertError | None:
        raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data)
        spec = self._by_selector.get(raw[:4])
        if spec is None:
            return None
        values = decode(list(spec.arg_types), raw[4:])
        args = {
            name: _readable(name, typ, value)
            for name, typ, value in zip(spec.arg_names, spec.arg_types, values, strict=True)
        }
        advice = ADVICE.get(spec.name, "see the error's NatSpec in contracts/IMeteringLedger.sol.")
        return LedgerRevertError(
            spec.name, args, f"{spec.name}: {advice.format(**{k: str(v) for k, v in args.items()})}"
        )

    def from_exception(self, exc: Exception) -> LedgerRevertError:
        data = getattr(exc, "data", None)
        if isinstance(data, (str, bytes)):
            decoded = self.decode(data)
            if decoded is not None:
                return decoded
        return LedgerRevertError("Unknown", {}, f"the ledger refused the call: {exc}")


def _readable(name: str, typ: str, value: Any) -> Any:
    if typ == "address":
        return to_checksum_address(value)
    if name == "code" and typ == "bytes32" and isinstance(value, bytes):
        # Institution codes are text padded with zeros: show "PCI-0001", not 32 bytes of hex.
        text = value.rstrip(b"\0")
        if text and text.isascii() and text.decode().isprintable():
            return repr(text.decode())
    if typ.startswith("bytes") and isinstance(value, bytes):
        return "0x" + value.hex()
    if name == "status":
        return STATUS_NAMES.get(value, value)
    if name == "kind" and typ == "uint8":
        return KIND_NAMES.get(value, value)
    return value
