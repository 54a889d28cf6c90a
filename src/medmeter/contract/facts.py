"""Facts about MeteringLedger that the Python side relies on, written once.

Each value here is checked against the compiled ABI and the deployed contract's constants by
`tests/unit/test_contract_facts.py` and `tests/contract/test_contract_facts.py`, so a change to the
contract that is not mirrored here fails a test instead of drifting.
"""

from __future__ import annotations

from enum import IntEnum

from eth_utils import keccak

from medmeter.errors import InputError

# `uint256 public constant`s of the contract (and the sizes of its integer fields).
MAX_BATCH_SIZE = 140
MAX_RECORDS_PER_INTERACTION = 1_000_000
MAX_UNITS_PER_RECORD = 1_000_000_000
BPS_DENOMINATOR = 10_000
UINT64_MAX = 2**64 - 1
LEDGER_ID = keccak(text="medmeter.MeteringLedger.v2")

# The roles the deploy hands out, beside OpenZeppelin's DEFAULT_ADMIN_ROLE (bytes32 zero).
OPERATING_ROLES = ("REGISTRAR_ROLE", "TARIFF_ROLE", "RELAYER_ROLE", "SETTLER_ROLE", "PAUSER_ROLE")
INSTITUTION_STATUS_NAMES = {0: "unregistered", 1: "active", 2: "suspended"}


class Kind(IntEnum):
    """`KIND_SYNC`, `KIND_FETCH`, `KIND_EXCHANGE` of the contract; `name.lower()` is the CLI's word."""

    SYNC = 0
    FETCH = 1
    EXCHANGE = 2

    @property
    def word(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int) -> Kind:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            try:
                return cls(int(value))
            except ValueError:
                raise InputError(f"interaction kind {value} is unknown: use sync, fetch or exchange.") from None
        try:
            return cls[value.strip().upper()]
        except (KeyError, AttributeError):
            raise InputError(f"interaction kind {value!r} is unknown: use sync, fetch or exchange.") from None


KIND_WORDS = tuple(kind.word for kind in Kind)

# Event signatures as the ABI spells them; topic0 is their keccak.
INTERACTION_RECORDED_SIGNATURE = (
    "InteractionRecorded(address,address,uint8,uint16,uint32,uint256,uint256,bytes32,uint256)"
)
INSTITUTION_REGISTERED_SIGNATURE = "InstitutionRegistered(address,bytes32,string,uint256)"
PERIOD_CLOSED_SIGNATURE = "PeriodClosed(uint256,uint256,uint256)"


def event_topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


INTERACTION_RECORDED_TOPIC = event_topic(INTERACTION_RECORDED_SIGNATURE)
INSTITUTION_REGISTERED_TOPIC = event_topic(INSTITUTION_REGISTERED_SIGNATURE)
PERIOD_CLOSED_TOPIC = event_topic(PERIOD_CLOSED_SIGNATURE)

# Events that change what an institution is on the ledger, each with `institution` as its first
# indexed argument (topic 1): what a statement's verification lists for the period.
REGISTRY_EVENT_SIGNATURES = (
    "InstitutionRegistered(address,bytes32,string,uint256)",
    "InstitutionSuspended(address)",
    "InstitutionReinstated(address)",
    "SignerRotated(address,address,address)",
    "RecoveryStarted(address,address,uint256)",
    "RecoveryCancelled(address,address,address)",
    "RecoveryCompleted(address,address,address)",
    "CreditLineChanged(address,uint256,uint256)",
    "NoncesCancelled(address,uint256,uint256,uint256)",
)
REGISTRY_EVENT_NAMES = {event_topic(s): s.split("(", 1)[0] for s in REGISTRY_EVENT_SIGNATURES}
