"""The institution's signed registry messages (EIP-712, domain as `medmeter.interaction.Domain`).

Each is a standard `eth_signTypedData_v4` payload: registration consent, self-rotation of the signer
key (with the new key's proof of possession), cancellation of a pending recovery, cancellation of
unrelayed nonces, a dispute, and a reversal. See docs/typed-data.md for the types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from medmeter.chain.ledger import code_to_bytes32
from medmeter.errors import InputError
from medmeter.fileio import write_json_atomic
from medmeter.signing.interaction import EIP712_DOMAIN_TYPE, Domain

NONCES_PER_WORD = 256

MESSAGE_TYPES: dict[str, list[dict[str, str]]] = {
    "Registration": [
        {"name": "institution", "type": "address"},
        {"name": "code", "type": "bytes32"},
        {"name": "name", "type": "string"},
        {"name": "deadline", "type": "uint64"},
    ],
    "SignerRotation": [
        {"name": "institution", "type": "address"},
        {"name": "newSigner", "type": "address"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ],
    "SignerAcceptance": [
        {"name": "institution", "type": "address"},
        {"name": "newSigner", "type": "address"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ],
    "RecoveryCancellation": [
        {"name": "institution", "type": "address"},
        {"name": "newSigner", "type": "address"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ],
    "NonceCancellation": [
        {"name": "institution", "type": "address"},
        {"name": "wordIndex", "type": "uint256"},
        {"name": "mask", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ],
    "Dispute": [
        {"name": "institution", "type": "address"},
        {"name": "period", "type": "uint256"},
        {"name": "interactionDigest", "type": "bytes32"},
        {"name": "reasonHash", "type": "bytes32"},
        {"name": "deadline", "type": "uint64"},
    ],
    "Reversal": [
        {"name": "institution", "type": "address"},
        {"name": "originalDigest", "type": "bytes32"},
        {"name": "units", "type": "uint64"},
        {"name": "reasonHash", "type": "bytes32"},
        {"name": "deadline", "type": "uint64"},
    ],
}


def encode_type(primary: str) -> str:
    """The EIP-712 `encodeType` of one of the message types (none references another type)."""
    fields = ",".join(f"{f['type']} {f['name']}" for f in MESSAGE_TYPES[primary])
    return f"{primary}({fields})"


def typed_message(primary: str, message: dict[str, Any], domain: Domain) -> dict[str, Any]:
    """The full `eth_signTypedData_v4` payload."""
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, primary: MESSAGE_TYPES[primary]},
        "primaryType": primary,
        "domain": domain.as_typed_data(),
        "message": message,
    }


def sign_message(primary: str, message: dict[str, Any], domain: Domain, account: LocalAccount) -> bytes:
    """The 65-byte signature (r || s || v) of `account` over the typed message."""
    signed = account.sign_message(encode_typed_data(full_message=typed_message(primary, message, domain)))
    return bytes(signed.signature)


def registration(institution: str, code: str, name: str, deadline: int, domain: Domain, account: LocalAccount) -> bytes:
    """The institution key's consent to be registered under `code` and `name` (signed on its own machine)."""
    message = {"institution": institution, "code": code_to_bytes32(code), "name": name, "deadline": deadline}
    return sign_message("Registration", message, domain, account)


def signer_rotation(
    institution: str, new_signer: str, nonce: int, deadline: int, domain: Domain, current: LocalAccount
) -> bytes:
    message = {"institution": institution, "newSigner": new_signer, "nonce": nonce, "deadline": deadline}
    return sign_message("SignerRotation", message, domain, current)


def signer_acceptance(
    institution: str, new_signer: str, nonce: int, deadline: int, domain: Domain, new_key: LocalAccount
) -> bytes:
    """The new key's proof of possession for a rotation."""
    message = {"institution": institution, "newSigner": new_signer, "nonce": nonce, "deadline": deadline}
    return sign_message("SignerAcceptance", message, domain, new_key)


def recovery_cancellation(
    institution: str, new_signer: str, nonce: int, deadline: int, domain: Domain, current: LocalAccount
) -> bytes:
    message = {"institution": institution, "newSigner": new_signer, "nonce": nonce, "deadline": deadline}
    return sign_message("RecoveryCancellation", message, domain, current)


def nonce_cancellation(
    institution: str, word_index: int, mask: int, deadline: int, domain: Domain, signer: LocalAccount
) -> bytes:
    message = {"institution": institution, "wordIndex": word_index, "mask": mask, "deadline": deadline}
    return sign_message("NonceCancellation", message, domain, signer)


def reversal(
    institution: str,
    original_digest: bytes,
    units: int,
    reason_hash: bytes,
    deadline: int,
    domain: Domain,
    signer: LocalAccount,
) -> bytes:
    """The institution's signed reversal of the recorded interaction whose EIP-712 digest is `original_digest`."""
    message = {
        "institution": institution,
        "originalDigest": original_digest,
        "units": units,
        "reasonHash": reason_hash,
        "deadline": deadline,
    }
    return sign_message("Reversal", message, domain, signer)


def nonce_masks(nonces: list[int]) -> dict[int, int]:
    """The (word index -> bit mask) pairs that cancel exactly `nonces`: one call per bitmap word."""
    masks: dict[int, int] = {}
    for nonce in nonces:
        word, bit = divmod(nonce, NONCES_PER_WORD)
        masks[word] = masks.get(word, 0) | (1 << bit)
    return masks


# ---------------------------------------------------------------------------------- files the clinic hands over

MESSAGE_FILE_FORMAT = "medmeter-signed-message/1"


def write_message_file(
    path: Path,
    primary: str,
    message: dict[str, Any],
    domain: Domain,
    signatures: dict[str, bytes],
    notes: dict[str, Any] | None = None,
) -> Path:
    """A signed message as the file a clinic gives the platform: the typed data and its signatures.
    Nothing in it is secret, and the platform can submit it but not change it. `notes` (JSON values)
    travel beside the message unsigned, for the reader's convenience: whoever uses one checks it
    against the signed fields (`read_message_notes`)."""
    plain = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in message.items()}
    body: dict[str, Any] = {
        "format": MESSAGE_FILE_FORMAT,
        "type": primary,
        "chain_id": domain.chain_id,
        "ledger": domain.verifying_contract,
        "message": plain,
        "signatures": {name: "0x" + sig.hex() for name, sig in signatures.items()},
    }
    if notes:
        body["notes"] = notes
    write_json_atomic(path, body)
    return path


def read_message_notes(path: Path) -> dict[str, Any]:
    """The unsigned notes of a file `write_message_file` wrote ({} if none or unreadable as such)."""
    try:
        notes = json.loads(path.read_bytes().decode("utf-8")).get("notes")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
        return {}
    return notes if isinstance(notes, dict) else {}


def read_message_file(path: Path, primary: str, domain: Domain) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(message, signatures) of a file `write_message_file` wrote, for this ledger; InputError otherwise."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(
            f"cannot read {path} as a signed message ({exc}): pass the file the institution made."
        ) from None
    if not isinstance(data, dict) or data.get("format") != MESSAGE_FILE_FORMAT or data.get("type") != primary:
        raise InputError(
            f"{path} is not a signed {primary} message: pass the file `medmeter consent` (or the "
            "command that made it) wrote."
        )
    if (
        data.get("chain_id") != domain.chain_id
        or str(data.get("ledger", "")).lower() != domain.verifying_contract.lower()
    ):
        raise InputError(
            f"{path} was signed for ledger {data.get('ledger')} on chain {data.get('chain_id')}, not this ledger "
            f"{domain.verifying_contract} on chain {domain.chain_id}: have the institution sign it for this ledger."
        )
    fields = {f["name"]: f["type"] for f in MESSAGE_TYPES[primary]}
    raw = data.get("message")
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise InputError(f"{path}: the message must have exactly the fields {', '.join(fields)}.")
    message: dict[str, Any] = {}
    for name, kind in fields.items():
        value = raw[name]
        try:
            if kind == "bytes32":
                decoded = bytes.fromhex(str(value).removeprefix("0x"))
                if len(decoded) != 32:
                    raise ValueError
                message[name] = decoded
            elif kind.startswith("uint"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError
                message[name] = value
            elif kind == "address":
                message[name] = to_checksum_address(str(value))
            else:
                message[name] = str(value)
        except ValueError:
            raise InputError(f"{path}: message field {name} is not a valid {kind}.") from None
    signatures = {}
    for name, sig in (data.get("signatures") or {}).items():
        try:
            signatures[str(name)] = bytes.fromhex(str(sig).removeprefix("0x"))
        except ValueError:
            raise InputError(f"{path}: signature {name} is not hex.") from None
    return message, signatures
