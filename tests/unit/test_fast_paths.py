"""The fast encoders (recordBatch calldata, bulk signing) must equal the reference paths exactly."""

from eth_abi import encode
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from medmeter.chain.ledger import RECORD_BATCH_SELECTOR, SIGNED_INTERACTION_ARRAY, encode_record_batch
from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, InteractionSigner, Kind

SIGNER = Account.from_key(b"\x07" * 32)
DOMAIN = Domain(31337, "0x" + "5a" * 20)

interactions = st.builds(
    Interaction,
    kind=st.sampled_from(list(Kind)),
    institution=st.just(SIGNER.address),
    counterparty=st.sampled_from([ZERO_ADDRESS, Account.from_key(b"\x08" * 32).address]),
    category=st.integers(0, 2**16 - 1),
    records=st.integers(0, 2**32 - 1),
    units=st.integers(0, 2**64 - 1),
    data_hash=st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()),
    nonce=st.integers(0, 2**256 - 1),
    deadline=st.integers(0, 2**64 - 1),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(interactions, min_size=0, max_size=5))
def test_fast_batch_encoding_equals_eth_abi(batch):
    signer = InteractionSigner(DOMAIN, SIGNER)
    signed = [signer.sign(item) for item in batch]
    expected = RECORD_BATCH_SELECTOR + encode([SIGNED_INTERACTION_ARRAY], [[s.as_contract_arg() for s in signed]])
    assert encode_record_batch(signed) == expected


@settings(max_examples=50, deadline=None)
@given(interactions)
def test_fast_signer_gives_the_reference_typed_data_signature(interaction):
    """InteractionSigner builds the digest by hand; eth-account's full typed-data path is the reference."""
    from medmeter.signing.interaction import sign_interaction

    fast = InteractionSigner(DOMAIN, SIGNER).sign(interaction)
    assert fast.signature == sign_interaction(interaction, DOMAIN, SIGNER).signature
