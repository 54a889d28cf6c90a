"""EIP-712 signatures: the digest the contract checks is the standard one, and every way a signature can be
wrong is refused with an error that names the reason.

The standard digest is computed here from the EIP-712 definition (keccak256(0x1901 || domainSeparator ||
hashStruct)) with eth_abi, independently of medmeter's signing code, and compared with the contract's
view, with eth-account's typed-data encoder and with what anvil's own `eth_signTypedData_v4` signs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from medmeter.errors import InputError
from medmeter.signing.interaction import (
    SECP256K1_N,
    ZERO_ADDRESS,
    Domain,
    Interaction,
    Kind,
    SignedInteraction,
    digest,
    sign_interaction,
    typed_data,
)
from tests.support.chains import (
    FAR_FUTURE,
    LedgerEnv,
    batch_refusal,
    event_args,
    expect_revert,
    hex32,
    priced_units,
    rotate_with_consent,
)

# Written out from the EIP-712 specification and the design's field list, not imported from medmeter.
EIP712_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
INTERACTION_TYPE = (
    "Interaction(uint8 kind,address institution,address counterparty,uint16 category,uint32 records,"
    "uint64 units,bytes32 dataHash,uint256 nonce,uint64 deadline)"
)
HALF_N = SECP256K1_N // 2
# The same types as JSON a wallet receives, written out here rather than taken from medmeter.
WALLET_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
WALLET_INTERACTION_TYPE = [
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
WALLET_REGISTRATION_TYPE = [
    {"name": "institution", "type": "address"},
    {"name": "code", "type": "bytes32"},
    {"name": "name", "type": "string"},
    {"name": "deadline", "type": "uint64"},
]
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None)


def spec_domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(text=EIP712_DOMAIN_TYPE), keccak(text=name), keccak(text=version), chain_id, verifying_contract],
        )
    )


def spec_hash_struct(interaction: Interaction) -> bytes:
    return keccak(
        encode(
            ["bytes32", "uint8", "address", "address", "uint16", "uint32", "uint64", "bytes32", "uint256", "uint64"],
            [
                keccak(text=INTERACTION_TYPE),
                int(interaction.kind),
                interaction.institution,
                interaction.counterparty,
                interaction.category,
                interaction.records,
                interaction.units,
                bytes.fromhex(interaction.data_hash[2:]),
                interaction.nonce,
                interaction.deadline,
            ],
        )
    )


def spec_digest(interaction: Interaction, domain_separator: bytes) -> bytes:
    return keccak(b"\x19\x01" + domain_separator + spec_hash_struct(interaction))


def contract_domain(env: LedgerEnv) -> tuple[str, str, int, str]:
    """(name, version, chainId, verifyingContract) as the contract reports them (EIP-5267)."""
    _, name, version, chain_id, verifying_contract, _, _ = env.ledger.contract.functions.eip712Domain().call()
    return name, version, chain_id, verifying_contract


def eth_account_digest(interaction: Interaction, domain: Domain) -> bytes:
    """The digest eth-account hashes for the full `eth_signTypedData_v4` payload."""
    signable = encode_typed_data(full_message=typed_data(interaction, domain))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def signature_parts(signature: str) -> tuple[bytes, int, int]:
    raw = bytes.fromhex(signature.removeprefix("0x"))
    return raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]


def with_signature(signed: SignedInteraction, r: bytes, s: int, v: int) -> SignedInteraction:
    return dataclasses.replace(signed, signature="0x" + (r + s.to_bytes(32, "big") + bytes([v])).hex())


addresses = st.binary(min_size=20, max_size=20).map(lambda raw: to_checksum_address(raw))
any_interaction = st.builds(
    Interaction,
    kind=st.integers(0, 255),  # the digest view hashes any uint8; validation comes later
    institution=addresses,
    counterparty=addresses,
    category=st.integers(0, 2**16 - 1),
    records=st.integers(0, 2**32 - 1),
    units=st.integers(0, 2**64 - 1),
    data_hash=st.binary(min_size=32, max_size=32).map(lambda raw: "0x" + raw.hex()),
    nonce=st.integers(0, 2**256 - 1),
    deadline=st.integers(0, 2**64 - 1),
)


# --------------------------------------------------------------------------- (a) the digest is standard EIP-712


def test_domain_separator_is_the_eip712_one_for_the_domain_the_contract_reports(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    fields, name, version, chain_id, verifying_contract, salt, extensions = (
        env.ledger.contract.functions.eip712Domain().call()
    )
    assert fields == b"\x0f"  # name, version, chainId and verifyingContract; no salt, no extensions
    assert (salt, extensions) == (b"\0" * 32, [])
    assert chain_id == env.w3.eth.chain_id
    assert verifying_contract == env.ledger.address
    # what medmeter puts in the typed data is the domain the contract declares
    assert env.ledger.domain.as_typed_data() == {
        "name": name,
        "version": version,
        "chainId": chain_id,
        "verifyingContract": verifying_contract,
    }
    separator = env.ledger.contract.functions.DOMAIN_SEPARATOR().call()
    assert separator == spec_domain_separator(name, version, chain_id, verifying_contract)
    assert env.ledger.contract.functions.INTERACTION_TYPEHASH().call() == keccak(text=INTERACTION_TYPE)


@PROPERTY_SETTINGS
@given(interaction=any_interaction)
def test_contract_digest_equals_the_eip712_digest_computed_three_ways(
    deployed_env: LedgerEnv, interaction: Interaction
) -> None:
    env = deployed_env
    separator = spec_domain_separator(*contract_domain(env))
    from_spec = spec_digest(interaction, separator)

    from_contract = env.ledger.contract.functions.interactionDigest(interaction.as_tuple()).call()

    assert from_contract == from_spec
    assert eth_account_digest(interaction, env.ledger.domain) == from_spec
    assert digest(interaction, env.ledger.domain) == from_spec


@PROPERTY_SETTINGS
@given(
    kind=st.sampled_from(list(Kind)),
    institution_index=st.integers(0, 2),
    category=st.sampled_from([1, 2, 3, 7]),
    records=st.integers(1, 40),
    data_hash=st.binary(min_size=32, max_size=32),
    nonce=st.integers(0, 2**256 - 1),
    deadline=st.integers(2**36, 2**64 - 1),
)
def test_a_signature_made_by_eth_accounts_sign_typed_data_is_accepted(
    deployed_env: LedgerEnv,
    kind: Kind,
    institution_index: int,
    category: int,
    records: int,
    data_hash: bytes,
    nonce: int,
    deadline: int,
) -> None:
    env = deployed_env
    clinic = env.institutions[institution_index]
    counterparty = env.institutions[(institution_index + 1) % 3].address if kind is Kind.EXCHANGE else ZERO_ADDRESS
    units = priced_units(env.ledger, kind, category, records)
    interaction = Interaction(
        kind, clinic.address, counterparty, category, records, units, "0x" + data_hash.hex(), nonce, deadline
    )
    signed = Account.sign_typed_data(clinic.key, full_message=typed_data(interaction, env.ledger.domain))
    wallet_signature = "0x" + signed.signature.hex().removeprefix("0x")

    # RFC 6979 signatures are deterministic: medmeter's own signing must give the wallet's bytes
    assert sign_interaction(interaction, env.ledger.domain, clinic).signature == wallet_signature
    item = SignedInteraction(interaction, env.ledger.domain, wallet_signature)
    assert env.ledger.simulate_batch([item], block="latest") is None


def test_a_wallet_signature_from_eth_sign_typed_data_v4_is_recorded(env: LedgerEnv) -> None:
    # anvil's unlocked dev account signs with its own (Rust) EIP-712 implementation, as a wallet would
    wallet = env.w3.eth.accounts[0]
    consent = {
        "types": {"EIP712Domain": WALLET_DOMAIN_TYPE, "Registration": WALLET_REGISTRATION_TYPE},
        "primaryType": "Registration",
        "domain": env.ledger.domain.as_typed_data(),
        "message": {
            "institution": wallet,
            "code": "0x" + b"WALLET-1".ljust(32, b"\0").hex(),
            "name": "Wallet clinic",
            "deadline": FAR_FUTURE,
        },
    }
    response = env.w3.provider.make_request("eth_signTypedData_v4", [wallet, json.dumps(consent)])  # type: ignore[arg-type]
    assert "result" in response, response
    env.ledger.register(wallet, "WALLET-1", "Wallet clinic", 1_000, FAR_FUTURE, bytes.fromhex(response["result"][2:]))
    interaction = env.interaction(Kind.SYNC, wallet, records=3, nonce=77)
    payload = json.dumps(typed_data(interaction, env.ledger.domain))
    response = env.w3.provider.make_request("eth_signTypedData_v4", [wallet, payload])  # type: ignore[arg-type]
    assert "result" in response, response
    item = SignedInteraction(interaction, env.ledger.domain, response["result"])

    receipt = env.record(item)

    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert (recorded["institution"], recorded["nonce"]) == (wallet, 77)


def test_an_eth_account_signature_is_recorded_with_its_fields(env: LedgerEnv) -> None:
    clinic, provider = env.institutions[0], env.institutions[1]
    interaction = env.interaction(Kind.EXCHANGE, clinic, counterparty=provider.address, records=4)
    signed = Account.sign_typed_data(clinic.key, full_message=typed_data(interaction, env.ledger.domain))
    item = SignedInteraction(interaction, env.ledger.domain, "0x" + signed.signature.hex().removeprefix("0x"))

    receipt = env.record(item)

    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert (recorded["institution"], recorded["counterparty"]) == (clinic.address, provider.address)
    assert (recorded["records"], recorded["nonce"]) == (4, interaction.nonce)


# --------------------------------------------------------------------------- (b) refusals


def test_a_signature_by_another_key_is_refused(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    clinic, impostor = env.institutions[0], Account.create()
    error = batch_refusal(env, env.signed(Kind.SYNC, clinic, signer=impostor))
    assert error.error_name == "InvalidSigner"
    assert error.error_args == {
        "institution": clinic.address,
        "recovered": impostor.address,
        "expected": clinic.address,
    }


def test_a_signature_by_another_registered_institution_is_refused(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    clinic, other = env.institutions[0], env.institutions[1]
    error = batch_refusal(env, env.signed(Kind.SYNC, clinic, signer=other))
    assert error.error_name == "InvalidSigner"
    assert error.error_args["recovered"] == other.address


@pytest.mark.parametrize("wrong", ["chain_id", "verifying_contract"])
def test_a_signature_for_another_domain_is_refused(deployed_env: LedgerEnv, wrong: str) -> None:
    env = deployed_env
    clinic = env.institutions[0]
    domain = env.ledger.domain
    other_domain = (
        Domain(domain.chain_id + 1, domain.verifying_contract)
        if wrong == "chain_id"
        else Domain(domain.chain_id, Account.create().address)
    )
    signed = sign_interaction(env.interaction(Kind.SYNC, clinic), other_domain, clinic)
    # submit it as if it were for this ledger: the contract, not the relay's domain check, must refuse it
    item = SignedInteraction(signed.interaction, domain, signed.signature)

    error = batch_refusal(env, item)

    assert error.error_name == "InvalidSigner"
    assert error.error_args["institution"] == clinic.address
    assert error.error_args["expected"] == clinic.address
    assert error.error_args["recovered"] != clinic.address


def test_an_expired_signature_is_refused(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    now = env.w3.eth.get_block("latest")["timestamp"]
    error = batch_refusal(env, env.signed(Kind.SYNC, env.institutions[0], deadline=now - 60))
    assert error.error_name == "InteractionExpired"
    assert error.error_args["deadline"] == now - 60


def test_a_replayed_signature_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    item = env.signed(Kind.SYNC, clinic)
    env.record(item)
    error = batch_refusal(env, item)
    assert (error.error_name, error.error_args) == (
        "NonceAlreadyUsed",
        {"institution": clinic.address, "nonce": item.interaction.nonce},
    )


def test_a_high_s_value_is_refused_as_malleable_by_the_contract(deployed_env: LedgerEnv) -> None:
    # The compact (r, vs) form the contract takes can carry an s in (n/2, 2^255): the contract must
    # apply the low-s rule to it rather than recover an address.
    env = deployed_env
    signed = env.signed(Kind.SYNC, env.institutions[0])
    r, _, _ = signature_parts(signed.signature)
    high_s = HALF_N + 1
    assert high_s < 2**255
    interaction_tuple = signed.interaction.as_tuple()
    fn = env.ledger.contract.functions.recordBatch([(interaction_tuple, r, high_s.to_bytes(32, "big"))])
    error = expect_revert(env.ledger, fn)
    assert (error.error_name, error.error_args) == ("ECDSAInvalidSignatureS", {"s": hex32(high_s.to_bytes(32, "big"))})


def test_a_malleable_high_s_signature_is_refused_as_malleable(deployed_env: LedgerEnv) -> None:
    """(r, n - s, v flipped) is the same signature's malleable twin: it must be refused for being malleable,
    either by medmeter before sending (InputError) or by the contract (ECDSAInvalidSignatureS), not
    mistaken for another signer."""
    env = deployed_env
    signed = env.signed(Kind.SYNC, env.institutions[0])
    r, s, v = signature_parts(signed.signature)
    assert s <= HALF_N  # eth-account signs low-s
    twin = with_signature(signed, r, SECP256K1_N - s, 55 - v)  # 27 <-> 28
    # the twin is a valid secp256k1 signature of the same digest by the same key
    signable = encode_typed_data(full_message=typed_data(twin.interaction, twin.domain))
    assert (
        Account.recover_message(signable, signature=bytes.fromhex(twin.signature[2:])) == signed.interaction.institution
    )

    try:
        error = env.ledger.simulate_batch([twin], block="latest")
    except InputError:
        return  # refused before it reached the chain
    assert error is not None, "the malleable twin was accepted"
    assert error.error_name == "ECDSAInvalidSignatureS", (
        f"the malleable twin was refused as {error.error_name} {error.error_args}; its s is "
        f"{'at least' if SECP256K1_N - s >= 2**255 else 'below'} 2^255, and EIP-2098's vs keeps v in that top bit"
    )


def test_a_truncated_signature_is_refused_by_the_client(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    signed = env.signed(Kind.SYNC, env.institutions[0])
    truncated = dataclasses.replace(signed, signature=signed.signature[:-2])
    with pytest.raises(InputError, match=r"\b65\b"):
        truncated.compact_signature()
    with pytest.raises(InputError):
        env.ledger.simulate_batch([truncated], block="latest")


def test_a_zero_r_is_refused_as_an_invalid_signature(deployed_env: LedgerEnv) -> None:
    env = deployed_env
    signed = env.signed(Kind.SYNC, env.institutions[0])
    _, s, v = signature_parts(signed.signature)
    error = batch_refusal(env, with_signature(signed, b"\0" * 32, s, v))
    assert error.error_name == "ECDSAInvalidSignature"


@pytest.mark.parametrize("garbage", [b"\x01" * 32, keccak(b"garbage r"), b"\xff" * 32])
def test_a_garbage_r_is_refused(deployed_env: LedgerEnv, garbage: bytes) -> None:
    env = deployed_env
    clinic = env.institutions[0]
    signed = env.signed(Kind.SYNC, clinic)
    _, s, v = signature_parts(signed.signature)
    error = batch_refusal(env, with_signature(signed, garbage, s, v))
    # an r off the curve recovers nothing; one on it recovers some unrelated key
    assert error.error_name in {"ECDSAInvalidSignature", "InvalidSigner"}
    if error.error_name == "InvalidSigner":
        assert error.error_args["recovered"] != clinic.address


def test_a_signature_by_a_rotated_out_key_is_refused(env: LedgerEnv) -> None:
    clinic = env.institutions[0]
    new_key = Account.create()
    rotate_with_consent(env, clinic.address, clinic, new_key)
    error = batch_refusal(env, env.signed(Kind.SYNC, clinic))
    assert error.error_name == "InvalidSigner"
    assert error.error_args == {"institution": clinic.address, "recovered": clinic.address, "expected": new_key.address}
    assert env.ledger.simulate_batch([env.signed(Kind.SYNC, clinic, signer=new_key)], block="latest") is None


def changed_field(env: LedgerEnv, field: str) -> tuple[Interaction, dict[str, Any]]:
    """A valid interaction and one change to `field` that keeps it otherwise valid (so only the signature fails)."""
    a, b, c = env.institutions
    base_kind = Kind.EXCHANGE if field == "counterparty" else Kind.SYNC
    base = env.interaction(base_kind, a, counterparty=b.address if field == "counterparty" else ZERO_ADDRESS)
    change: dict[str, Any] = {
        "kind": {"kind": Kind.FETCH},
        "institution": {"institution": b.address},
        "counterparty": {"counterparty": c.address},
        "category": {"category": 3 if base.category != 3 else 1},
        "records": {"records": base.records + 1},
        "units": {"units": base.units + 1},
        "data_hash": {"data_hash": "0x" + ("ff" if base.data_hash[2:4] != "ff" else "00") + base.data_hash[4:]},
        "nonce": {"nonce": base.nonce + 1},
        "deadline": {"deadline": FAR_FUTURE - 1},
    }[field]
    return base, change


@pytest.mark.parametrize(
    "field", ["kind", "institution", "counterparty", "category", "records", "units", "data_hash", "nonce", "deadline"]
)
def test_changing_any_field_after_signing_is_refused(deployed_env: LedgerEnv, field: str) -> None:
    env = deployed_env
    base, change = changed_field(env, field)
    signer = env.institutions[0]
    signed = sign_interaction(base, env.ledger.domain, signer)
    assert env.ledger.simulate_batch([signed], block="latest") is None  # control: as signed, it is accepted

    tampered = dataclasses.replace(signed, interaction=dataclasses.replace(base, **change))
    error = batch_refusal(env, tampered)

    assert error.error_name == "InvalidSigner"
    institution = tampered.interaction.institution
    assert error.error_args["institution"] == institution
    assert error.error_args["expected"] == env.ledger.institution(institution).signer
    assert error.error_args["recovered"] != error.error_args["expected"]


def test_a_full_message_signed_with_eth_accounts_encoder_from_a_hand_written_payload_is_recorded(
    env: LedgerEnv,
) -> None:
    """The typed data is built here from the wallet's JSON shape (not by medmeter) and hashed by eth-account's
    `encode_typed_data(full_message=...)`: what any `eth_signTypedData_v4` wallet signs is what the ledger takes."""
    clinic = env.institutions[0]
    sync_rate, _, _ = env.ledger.contract.functions.rateOf(2).call()
    _, name, version, chain_id, verifying_contract, _, _ = env.ledger.contract.functions.eip712Domain().call()
    assert version == "2"
    message = {
        "kind": 0,
        "institution": clinic.address,
        "counterparty": ZERO_ADDRESS,
        "category": 2,
        "records": 6,
        "units": 6 * sync_rate,
        "dataHash": "0x" + "cd" * 32,
        "nonce": 4242,
        "deadline": FAR_FUTURE,
    }
    payload = {
        "types": {"EIP712Domain": WALLET_DOMAIN_TYPE, "Interaction": WALLET_INTERACTION_TYPE},
        "primaryType": "Interaction",
        "domain": {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying_contract},
        "message": message,
    }
    signature = Account.sign_message(encode_typed_data(full_message=payload), clinic.key).signature
    interaction = Interaction(
        Kind.SYNC, clinic.address, ZERO_ADDRESS, 2, 6, 6 * sync_rate, "0x" + "cd" * 32, 4242, FAR_FUTURE
    )
    item = SignedInteraction(interaction, env.ledger.domain, "0x" + bytes(signature).hex())

    receipt = env.record(item)

    [recorded] = event_args(env.ledger, receipt, "InteractionRecorded")
    assert (recorded["units"], recorded["nonce"]) == (6 * sync_rate, 4242)
    assert env.ledger.position(clinic.address).balance == 6 * sync_rate
