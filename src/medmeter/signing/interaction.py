"""Signed interactions: the EIP-712 typed data an institution signs, and their JSON-lines files.

The typed data is standard EIP-712 (`eth_signTypedData_v4`): a wallet given `typed_data()`
produces a signature the contract accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address

from medmeter.contract.facts import Kind
from medmeter.errors import InputError

DOMAIN_NAME = "MeteringLedger"
DOMAIN_VERSION = "2"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

INTERACTION_TYPES = {
    "Interaction": [
        {"name": "kind", "type": "uint8"},
        {"name": "institution", "type": "address"},
        {"name": "counterparty", "type": "address"},
        {"name": "category", "type": "uint16"},
        {"name": "records", "type": "uint32"},
        {"name": "units", "type": "uint64"},
        {"name": "dataHash", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ]
}
EIP712_DOMAIN_ENCODE_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


@dataclass(frozen=True)
class Domain:
    chain_id: int
    verifying_contract: str

    def as_typed_data(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


@dataclass(frozen=True)
class Interaction:
    kind: Kind
    institution: str
    counterparty: str
    category: int
    records: int
    units: int  # the gross units the institution agrees to: records x the tariff's rate for (kind, category)
    data_hash: str
    nonce: int
    deadline: int

    def message(self) -> dict[str, Any]:
        return {
            "kind": int(self.kind),
            "institution": self.institution,
            "counterparty": self.counterparty,
            "category": self.category,
            "records": self.records,
            "units": self.units,
            "dataHash": self.data_hash,
            "nonce": self.nonce,
            "deadline": self.deadline,
        }

    def abi_words(self) -> bytes:
        """The nine fields as 32-byte ABI words, in struct order: both the EIP-712 `encodeData`
        (after the type hash) and the static struct's calldata encoding."""
        return b"".join(
            (
                int(self.kind).to_bytes(32, "big"),
                bytes.fromhex(self.institution[2:]).rjust(32, b"\0"),
                bytes.fromhex(self.counterparty[2:]).rjust(32, b"\0"),
                self.category.to_bytes(32, "big"),
                self.records.to_bytes(32, "big"),
                self.units.to_bytes(32, "big"),
                bytes.fromhex(self.data_hash[2:]),
                self.nonce.to_bytes(32, "big"),
                self.deadline.to_bytes(32, "big"),
            )
        )

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            int(self.kind),
            self.institution,
            self.counterparty,
            self.category,
            self.records,
            self.units,
            bytes.fromhex(self.data_hash[2:]),
            self.nonce,
            self.deadline,
        )


def typed_data(interaction: Interaction, domain: Domain) -> dict[str, Any]:
    """The full `eth_signTypedData_v4` payload for `interaction`."""
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, **INTERACTION_TYPES},
        "primaryType": "Interaction",
        "domain": domain.as_typed_data(),
        "message": interaction.message(),
    }


@dataclass(frozen=True)
class SignedInteraction:
    interaction: Interaction
    domain: Domain
    signature: str  # 65 bytes r || s || v, as wallets return it

    def compact_signature(self) -> tuple[bytes, bytes]:
        """EIP-2098 (r, vs) form, as the contract takes it."""
        raw = bytes.fromhex(self.signature[2:])
        if len(raw) != 65:
            raise InputError(
                f"signature of nonce {self.interaction.nonce} is {len(raw)} bytes, not 65: it was truncated or "
                "corrupted; have the institution sign again."
            )
        r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
        if v in (0, 1):
            v += 27
        if v not in (27, 28):
            raise InputError(f"signature of nonce {self.interaction.nonce} has v={v}, not 27 or 28: sign again.")
        if s > SECP256K1_N // 2:
            # The malleable twin of a valid signature (EIP-2: wallets only produce low s). EIP-2098's
            # vs keeps v in the top bit, so most high-s values cannot even be encoded: refuse here,
            # rather than let the contract see a corrupted signature and name the wrong cause.
            raise InputError(
                f"signature of nonce {self.interaction.nonce} has a high s value (malleable form, EIP-2): "
                "have the institution sign again with a standard wallet."
            )
        vs = s | ((v - 27) << 255)
        return r, vs.to_bytes(32, "big")

    def as_contract_arg(self) -> tuple[Any, ...]:
        r, vs = self.compact_signature()
        return (self.interaction.as_tuple(), r, vs)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self.interaction)
        record["kind"] = self.interaction.kind.word
        record["chain_id"] = self.domain.chain_id
        record["verifying_contract"] = self.domain.verifying_contract
        record["signature"] = self.signature
        return record


def sign_interaction(interaction: Interaction, domain: Domain, account: LocalAccount) -> SignedInteraction:
    signable = encode_typed_data(full_message=typed_data(interaction, domain))
    signed = account.sign_message(signable)
    return SignedInteraction(interaction, domain, "0x" + signed.signature.hex().removeprefix("0x"))


def recover_signer(signed: SignedInteraction) -> str:
    signable = encode_typed_data(full_message=typed_data(signed.interaction, signed.domain))
    return Account.recover_message(signable, signature=bytes.fromhex(signed.signature[2:]))


def digest(interaction: Interaction, domain: Domain) -> bytes:
    """The EIP-712 digest: keccak256(0x1901 || domainSeparator || structHash)."""
    from eth_utils import keccak

    signable = encode_typed_data(full_message=typed_data(interaction, domain))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


# --------------------------------------------------------------------------- JSON lines

REQUIRED_FIELDS = (
    "kind",
    "institution",
    "counterparty",
    "category",
    "records",
    "units",
    "data_hash",
    "nonce",
    "deadline",
    "chain_id",
    "verifying_contract",
    "signature",
)


def parse_signed(record: Any, where: str) -> SignedInteraction:
    """Validate one decoded JSON object; `where` names it in errors (file:line)."""
    if not isinstance(record, dict):
        raise InputError(
            f"{where}: expected a JSON object, got {type(record).__name__}; each line holds one interaction as "
            "`medmeter sign` writes it."
        )
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise InputError(f"{where}: missing field(s) {', '.join(missing)}; sign the interaction with `medmeter sign`.")
    try:
        interaction = Interaction(
            kind=Kind.parse(record["kind"]),
            institution=_address(record["institution"], "institution"),
            counterparty=_address(record["counterparty"], "counterparty"),
            category=_uint(record["category"], "category", 16),
            records=_uint(record["records"], "records", 32),
            units=_uint(record["units"], "units", 64),
            data_hash=_hex(record["data_hash"], "data_hash", 32),
            nonce=_uint(record["nonce"], "nonce", 256),
            deadline=_uint(record["deadline"], "deadline", 64),
        )
        domain = Domain(
            chain_id=_uint(record["chain_id"], "chain_id", 256),
            verifying_contract=_address(record["verifying_contract"], "verifying_contract"),
        )
        signature = _hex(record["signature"], "signature", 65)
    except InputError as exc:
        raise InputError(
            f"{where}: {str(exc).rstrip('.')}; fix that line, or have the institution sign the interaction again."
        ) from None
    signed = SignedInteraction(interaction, domain, signature)
    try:
        signed.compact_signature()  # refuses a v the contract cannot take
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return signed


def read_signed(path: Path) -> list[SignedInteraction]:
    """All interactions of a JSON-lines file; the first malformed line stops with its line number."""
    if not path.is_file():
        raise InputError(f"{path} does not exist: give the file written by `medmeter sign` or `medmeter simulate`.")
    items: list[SignedInteraction] = []
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is named, not a traceback
        for line_number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            items.append(parse_signed(_json_line(raw, f"{path}:{line_number}"), f"{path}:{line_number}"))
    return items


def _json_line(raw: bytes, where: str) -> Any:
    """One JSON-lines record; every way a line can fail to be JSON is one sentence naming it."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON ({exc.msg})"
    except RecursionError:
        reason = "JSON nested too deeply to be an interaction"
    except ValueError as exc:  # Python refuses integers of more than 4,300 digits
        reason = f"not an interaction ({str(exc).split(';')[0]})"
    raise InputError(f"{where}: {reason}; fix or remove that line.")


def iter_json_lines(items: Iterable[SignedInteraction]) -> Iterator[str]:
    for item in items:
        yield json.dumps(item.to_json(), separators=(",", ":")) + "\n"


def with_fields(interaction: Interaction, **changes: Any) -> Interaction:
    return replace(interaction, **changes)


def _address(value: Any, name: str) -> str:
    checksummed = _checksummed(value) if isinstance(value, str) and len(value) <= 42 else None
    if checksummed is None:
        raise InputError(f"field {name} is not an address: {value!r}.")
    return checksummed


@lru_cache(maxsize=16_384)
def _checksummed(value: str) -> str | None:
    """`value` checksummed, or None if it is no address. Cached: each check costs two keccaks, and a
    file or a POST names the same few institutions thousands of times (the service's intake and relay)."""
    return to_checksum_address(value) if is_address(value) else None


def _uint(value: Any, name: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise InputError(f"field {name} must be an integer in 0..2^{bits}-1, got {value!r}.")
    return value


def _hex(value: Any, name: str, length: int | None) -> str:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise InputError(f"field {name} must be 0x-prefixed hex, got {value!r}.")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InputError(f"field {name} is not valid hex: {value!r}.") from None
    if length is not None and len(raw) != length:
        hint = " (truncated or corrupted)" if name == "signature" else ""
        raise InputError(f"field {name} must be {length} bytes, got {len(raw)}{hint}.")
    return "0x" + raw.hex()


# --------------------------------------------------------------------------- bulk signing


class InteractionSigner:
    """Signs many interactions for one domain and key about ten times faster than
    `sign_interaction`: the EIP-712 digest is assembled from its definition (domain separator
    computed once) and signed with coincurve. `sign_interaction` stays the reference; the
    test suite checks both give the same signature."""

    def __init__(self, domain: Domain, account: LocalAccount) -> None:
        from coincurve import PrivateKey
        from eth_abi import encode
        from eth_utils import keccak

        self._keccak = keccak
        self._key = PrivateKey(account.key)
        self.address = account.address
        self.domain = domain
        domain_typehash = keccak(text=EIP712_DOMAIN_ENCODE_TYPE)
        self._domain_separator = keccak(
            encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    domain_typehash,
                    keccak(text=DOMAIN_NAME),
                    keccak(text=DOMAIN_VERSION),
                    domain.chain_id,
                    domain.verifying_contract,
                ],
            )
        )
        self._typehash = keccak(text=encode_type())

    def digest(self, interaction: Interaction) -> bytes:
        words = self._typehash + interaction.abi_words()
        return self._keccak(b"\x19\x01" + self._domain_separator + self._keccak(words))

    def sign(self, interaction: Interaction) -> SignedInteraction:
        signature = self._key.sign_recoverable(self.digest(interaction), hasher=None)
        # coincurve returns r || s || recovery id (0/1); wallets give v = 27/28.
        return SignedInteraction(interaction, self.domain, "0x" + (signature[:64] + bytes([signature[64] + 27])).hex())


def encode_type() -> str:
    """The EIP-712 `encodeType` of Interaction."""
    fields = ",".join(f"{f['type']} {f['name']}" for f in INTERACTION_TYPES["Interaction"])
    return f"Interaction({fields})"
