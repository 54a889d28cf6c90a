"""Nothing is writable by an account without its role: checked for every state-changing function of the ABI.

The role each function needs is written down here (REQUIRED_ROLE); a test holds that map against the ABI,
so a state-changing function added to the contract without an entry fails the suite instead of escaping it.
Every function is then called (eth_call) by every kind of account that lacks its role: each institution, an
outsider, an account holding every other role, and one holder of each other single role.

Functions that need no platform role are in the map too, by what authorises them instead: the
institution's signer calling directly (SIGNER_ONLY), the signer's EIP-712 signature whoever submits it
(SIGNATURE_AUTHORISED), the pending admin (PENDING_ADMIN_ONLY), or a recovery's elapsed delay (AFTER_DELAY).
Each of those is refused to every account holding every platform role.

The admin role is single (AccessControlDefaultAdminRules): the deployer keeps it and gives up its operating
roles, so "only admin" is the deployer and "every other role" never includes the admin role.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from medmeter.chain.ledger import ROLES, code_to_bytes32
from medmeter.signing.interaction import Kind
from medmeter.toolchain.compiler import Artifact
from tests.support.chains import (
    LedgerEnv,
    deploy_env,
    event_args,
    expect_revert,
    hex32,
    register_with_consent,
    rolled_back,
)

ADMIN_ROLE = "DEFAULT_ADMIN_ROLE"
OPERATING_ROLES = ("REGISTRAR_ROLE", "TARIFF_ROLE", "RELAYER_ROLE", "SETTLER_ROLE", "PAUSER_ROLE")
ALL_ROLES = (ADMIN_ROLE, *OPERATING_ROLES)

# The role each state-changing function needs, from the design's division of duties. AccessControl's
# grantRole/revokeRole need the role's admin role, which is DEFAULT_ADMIN_ROLE for every role here
# (test_every_role_is_administered_by_the_admin_role checks that).
REQUIRED_ROLE: dict[str, str] = {
    "registerInstitution": "REGISTRAR_ROLE",
    "suspendInstitution": "REGISTRAR_ROLE",
    "reinstateInstitution": "REGISTRAR_ROLE",
    "startRecovery": "REGISTRAR_ROLE",
    "setCreditLine": "REGISTRAR_ROLE",
    "setRate": "TARIFF_ROLE",
    "setPlatformFee": "TARIFF_ROLE",
    "scheduleRate": "TARIFF_ROLE",
    "schedulePlatformFee": "TARIFF_ROLE",
    "recordInteraction": "RELAYER_ROLE",
    "recordBatch": "RELAYER_ROLE",
    "rotateSigner": "RELAYER_ROLE",
    "closePeriod": "SETTLER_ROLE",
    "anchorSettlement": "SETTLER_ROLE",
    "supersedeSettlement": "SETTLER_ROLE",
    "recordReversal": "SETTLER_ROLE",
    "pause": "PAUSER_ROLE",
    "unpause": "PAUSER_ROLE",
    "grantRole": ADMIN_ROLE,
    "revokeRole": ADMIN_ROLE,
    "beginDefaultAdminTransfer": ADMIN_ROLE,
    "cancelDefaultAdminTransfer": ADMIN_ROLE,
    "changeDefaultAdminDelay": ADMIN_ROLE,
    "rollbackDefaultAdminDelay": ADMIN_ROLE,
}
# Functions any account may call, but only about itself.
SELF_ONLY = {"renounceRole"}
# Only the institution's current signer, calling from its own address.
SIGNER_ONLY = {"cancelRecovery", "cancelNonces", "fileDispute"}
# Anyone may submit; the institution's signer's EIP-712 signature is the authority.
SIGNATURE_AUTHORISED = {"cancelRecoveryBySig", "cancelNoncesBySig", "fileDisputeBySig"}
# Only the admin-elect, after the transfer delay.
PENDING_ADMIN_ONLY = {"acceptDefaultAdminTransfer"}
# Anyone, but only once a recovery's delay has passed.
AFTER_DELAY = {"completeRecovery"}
NOT_ROLE_GATED = SELF_ONLY | SIGNER_ONLY | SIGNATURE_AUTHORISED | PENDING_ADMIN_ONLY | AFTER_DELAY


@dataclass
class RoleCast:
    """A ledger and accounts with known roles: `only[role]` holds exactly that role, `all_but[role]` every role
    except that one."""

    env: LedgerEnv
    role_ids: dict[str, bytes]
    only: dict[str, LocalAccount]
    all_but: dict[str, LocalAccount]
    outsider: LocalAccount

    def callers_lacking(self, role: str) -> dict[str, str]:
        """Every kind of account without `role`, by a readable label."""
        callers = {f"institution-{i}": account.address for i, account in enumerate(self.env.institutions)}
        callers["outsider"] = self.outsider.address
        callers["every-other-role"] = self.all_but[role].address
        callers.update({f"only-{other}": self.only[other].address for other in ALL_ROLES if other != role})
        return callers

    def every_account(self) -> dict[str, str]:
        accounts = {f"institution-{i}": account.address for i, account in enumerate(self.env.institutions)}
        accounts["outsider"] = self.outsider.address
        accounts.update({f"only-{role}": account.address for role, account in self.only.items()})
        accounts.update({f"all-but-{role}": account.address for role, account in self.all_but.items()})
        return accounts


def client_role_name(role: str) -> str:
    """The name medmeter's Ledger.grant_role takes: `admin` for DEFAULT_ADMIN_ROLE, the role's own name otherwise."""
    return "admin" if role == ADMIN_ROLE else role


@pytest.fixture(scope="module")
def cast(w3: Web3, artifact: Artifact) -> RoleCast:
    env = deploy_env(w3, artifact)
    functions = env.ledger.contract.functions
    role_ids = {role: getattr(functions, role)().call() for role in ALL_ROLES}
    only: dict[str, LocalAccount] = {role: Account.create() for role in OPERATING_ROLES}
    only[ADMIN_ROLE] = env.admin  # the admin role has a single holder: the deployer, stripped of the others
    all_but = {role: Account.create() for role in ALL_ROLES}
    for role in OPERATING_ROLES:
        env.ledger.grant_role(client_role_name(role), only[role].address)
    for role in ALL_ROLES:
        for other in OPERATING_ROLES:
            if other != role:
                env.ledger.grant_role(client_role_name(other), all_but[role].address)
    assert env.ledger.transactor is not None
    for role in OPERATING_ROLES:
        env.ledger.transactor.transact(functions.renounceRole(role_ids[role], env.admin.address))
    return RoleCast(env, role_ids, only, all_but, Account.create())


@pytest.fixture
def env(cast: RoleCast) -> Iterator[LedgerEnv]:
    with rolled_back(cast.env) as fresh:
        yield fresh


def state_changing_functions(abi: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    entries = [e for e in abi if e["type"] == "function" and e["stateMutability"] not in ("view", "pure")]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "overloaded state-changing functions: key the role map by signature"
    return {e["name"]: e for e in entries}


def plausible_value(abi_input: dict[str, Any], cast: RoleCast) -> Any:
    """A well-formed argument for an ABI input, so that a refusal comes from the role check and not from
    argument decoding. Structs of signed interactions get a real signed interaction."""
    env = cast.env
    typ: str = abi_input["type"]
    if typ.endswith("[]"):
        return [plausible_value({**abi_input, "type": typ[:-2]}, cast)]
    if abi_input.get("internalType", "").endswith(".SignedInteraction"):
        return env.signed(Kind.SYNC, env.institutions[0]).as_contract_arg()
    if typ == "tuple":
        return tuple(plausible_value(component, cast) for component in abi_input["components"])
    if abi_input["name"] == "role":
        return cast.role_ids["REGISTRAR_ROLE"]
    if typ == "address":
        return env.institutions[1].address
    if typ.startswith(("uint", "int")):
        return 1
    if typ == "bytes32":
        return keccak(text=f"plausible {abi_input['name']}")
    if typ.startswith("bytes"):
        return b"\x01" * int(typ[5:] or 1)
    if typ == "string":
        return "plausible"
    if typ == "bool":
        return True
    raise AssertionError(f"no plausible value for ABI type {typ}: extend plausible_value")


def with_plausible_arguments(cast: RoleCast, name: str) -> Any:
    """The contract function `name` bound to arguments built from its ABI inputs."""
    entry = state_changing_functions(cast.env.artifact.abi)[name]
    arguments = [plausible_value(abi_input, cast) for abi_input in entry["inputs"]]
    return getattr(cast.env.ledger.contract.functions, name)(*arguments)


# --------------------------------------------------------------------------- the map covers the ABI


def test_the_role_map_covers_exactly_the_state_changing_functions_of_the_abi(cast: RoleCast) -> None:
    in_abi = set(state_changing_functions(cast.env.artifact.abi))
    assert set(REQUIRED_ROLE) | NOT_ROLE_GATED == in_abi
    assert not set(REQUIRED_ROLE) & NOT_ROLE_GATED
    groups = [SELF_ONLY, SIGNER_ONLY, SIGNATURE_AUTHORISED, PENDING_ADMIN_ONLY, AFTER_DELAY]
    assert sum(len(group) for group in groups) == len(NOT_ROLE_GATED)


def test_the_client_role_names_are_the_contracts_roles(cast: RoleCast) -> None:
    assert set(ROLES) == set(OPERATING_ROLES)
    for role in OPERATING_ROLES:
        assert cast.role_ids[role] == keccak(text=role) == cast.env.ledger.role_id(role)
    assert cast.role_ids[ADMIN_ROLE] == b"\0" * 32 == cast.env.ledger.role_id("admin")


def test_every_role_is_administered_by_the_admin_role(cast: RoleCast) -> None:
    functions = cast.env.ledger.contract.functions
    for role in ALL_ROLES:
        assert functions.getRoleAdmin(cast.role_ids[role]).call() == cast.role_ids[ADMIN_ROLE]


def test_the_deployer_holds_only_the_admin_role_and_the_cast_holds_what_it_should(cast: RoleCast) -> None:
    has_role = cast.env.ledger.contract.functions.hasRole
    assert cast.env.ledger.contract.functions.defaultAdmin().call() == cast.env.admin.address
    for role in ALL_ROLES:
        role_id = cast.role_ids[role]
        assert has_role(role_id, cast.env.admin.address).call() == (role == ADMIN_ROLE)
        for other in ALL_ROLES:
            assert has_role(role_id, cast.only[other].address).call() == (other == role)
            expected = other != role and role != ADMIN_ROLE
            assert has_role(role_id, cast.all_but[other].address).call() == expected
        for account in [*cast.env.institutions, cast.outsider]:
            assert not has_role(role_id, account.address).call()


# --------------------------------------------------------------------------- every refusal


@pytest.mark.parametrize("function_name", sorted(REQUIRED_ROLE))
def test_every_account_without_the_role_is_refused(cast: RoleCast, function_name: str) -> None:
    role = REQUIRED_ROLE[function_name]
    needed = hex32(cast.role_ids[role])
    callers = cast.callers_lacking(role)
    assert len(callers) == 10  # 3 institutions, an outsider, every-other-role, 5 single other roles
    for label, caller in callers.items():
        error = expect_revert(cast.env.ledger, with_plausible_arguments(cast, function_name), sender=caller)
        assert (error.error_name, error.error_args) == (
            "AccessControlUnauthorizedAccount",
            {"account": caller, "neededRole": needed},
        ), f"{function_name} called by {label} ({caller})"


@pytest.mark.parametrize("function_name", sorted(REQUIRED_ROLE))
def test_the_role_alone_is_enough_to_pass_the_role_check(cast: RoleCast, function_name: str) -> None:
    """Control for the refusals above: with the same arguments, a holder of just that role is not refused for
    lack of a role (it may still be refused for another reason, e.g. unpausing a ledger that is not paused)."""
    holder = cast.only[REQUIRED_ROLE[function_name]].address
    try:
        with_plausible_arguments(cast, function_name).call({"from": holder})
    except (ContractCustomError, ContractLogicError) as exc:
        error = cast.env.ledger.errors.from_exception(exc)
        assert error.error_name != "AccessControlUnauthorizedAccount", error.error_args
        assert error.error_name != "Unknown", str(error)


@pytest.mark.parametrize("role", ALL_ROLES)
def test_no_account_can_renounce_a_role_for_another(cast: RoleCast, role: str) -> None:
    target = cast.only[role].address  # holds the role
    # The admin cannot even renounce for itself without a scheduled, elapsed transfer (DefaultAdminRules).
    expected = (
        ("AccessControlEnforcedDefaultAdminDelay", {"schedule": 0})
        if role == ADMIN_ROLE
        else ("AccessControlBadConfirmation", {})
    )
    for label, caller in cast.every_account().items():
        if caller == target and role != ADMIN_ROLE:
            continue  # renouncing one's own role is allowed (tested below)
        fn = cast.env.ledger.contract.functions.renounceRole(cast.role_ids[role], target)
        error = expect_revert(cast.env.ledger, fn, sender=caller)
        assert (error.error_name, error.error_args) == expected, label


def test_the_admin_role_cannot_be_granted_or_revoked_directly(cast: RoleCast) -> None:
    functions = cast.env.ledger.contract.functions
    admin_id = cast.role_ids[ADMIN_ROLE]
    for fn in (
        functions.grantRole(admin_id, cast.outsider.address),
        functions.revokeRole(admin_id, cast.env.admin.address),
    ):
        error = expect_revert(cast.env.ledger, fn, sender=cast.env.admin.address)
        assert error.error_name == "AccessControlEnforcedDefaultAdminRules"


@pytest.mark.parametrize("function_name", sorted(SIGNER_ONLY))
def test_signer_only_functions_refuse_every_account_but_the_institutions_signer(
    cast: RoleCast, function_name: str
) -> None:
    """The institution's own calls: every platform role together is not enough; its signer passes the check."""
    institution = cast.env.institutions[1]  # plausible_value names institutions[1] for every address input
    callers = {label: a for label, a in cast.every_account().items() if a != institution.address}
    for label, caller in callers.items():
        error = expect_revert(cast.env.ledger, with_plausible_arguments(cast, function_name), sender=caller)
        assert (error.error_name, error.error_args["caller"]) == ("NotInstitutionSigner", caller), label
    try:
        with_plausible_arguments(cast, function_name).call({"from": institution.address})
    except (ContractCustomError, ContractLogicError) as exc:
        error = cast.env.ledger.errors.from_exception(exc)
        assert error.error_name not in ("NotInstitutionSigner", "Unknown"), str(error)


@pytest.mark.parametrize("function_name", sorted(SIGNATURE_AUTHORISED))
def test_signature_authorised_functions_refuse_a_signature_not_by_the_institutions_signer(
    cast: RoleCast, function_name: str
) -> None:
    """Submitted by an account holding every platform role, a signature made by any other key is refused."""
    from medmeter.signing.consent import sign_message

    env = cast.env
    institution = env.institutions[1]
    entry = state_changing_functions(env.artifact.abi)[function_name]
    arguments = [plausible_value(i, cast) for i in entry["inputs"]]
    names = [i["name"] for i in entry["inputs"]]
    arguments[names.index("deadline")] = 2**40
    primary, fields = {
        "cancelRecoveryBySig": ("RecoveryCancellation", {"newSigner": "0x" + "00" * 20, "nonce": 1}),
        "cancelNoncesBySig": ("NonceCancellation", {"wordIndex": 1, "mask": 1}),
        "fileDisputeBySig": (
            "Dispute",
            {"period": 1, "interactionDigest": arguments[2], "reasonHash": arguments[3]},
        ),
    }[function_name]
    message = {"institution": institution.address, **fields, "deadline": 2**40}
    for forger in (env.admin, cast.all_but[ADMIN_ROLE], cast.outsider):
        arguments[names.index("signature")] = sign_message(primary, message, env.ledger.domain, forger)
        fn = getattr(env.ledger.contract.functions, function_name)(*arguments)
        if function_name == "cancelRecoveryBySig":
            arguments[names.index("nonce")] = 0  # the registry nonce is checked before the signature
            fn = getattr(env.ledger.contract.functions, function_name)(*arguments)
        error = expect_revert(env.ledger, fn, sender=cast.all_but[ADMIN_ROLE].address)
        assert error.error_name == "InvalidMessageSigner", (forger.address, error)
        assert error.error_args["expected"] == institution.address


def test_accepting_the_admin_role_needs_a_pending_transfer_to_the_caller(cast: RoleCast) -> None:
    fn = cast.env.ledger.contract.functions.acceptDefaultAdminTransfer()
    for label, caller in cast.every_account().items():
        error = expect_revert(cast.env.ledger, fn, sender=caller)
        assert error.error_name == "AccessControlInvalidDefaultAdmin", label


def test_completing_a_recovery_needs_one_pending(cast: RoleCast) -> None:
    fn = with_plausible_arguments(cast, "completeRecovery")
    for label, caller in cast.every_account().items():
        error = expect_revert(cast.env.ledger, fn, sender=caller)
        assert error.error_name == "NoRecoveryPending", label


# --------------------------------------------------------------------------- granting, revoking, renouncing


def test_the_admin_grants_and_revokes_a_role(cast: RoleCast, env: LedgerEnv) -> None:
    registrar = Account.create()
    role_id = cast.role_ids["REGISTRAR_ROLE"]
    functions = env.ledger.contract.functions

    receipt = env.ledger.grant_role("registrar", registrar.address)
    assert event_args(env.ledger, receipt, "RoleGranted") == [
        {"role": role_id, "account": registrar.address, "sender": env.admin.address}
    ]
    assert functions.hasRole(role_id, registrar.address).call()
    as_registrar = env.as_account(registrar)
    newcomer = Account.create()
    register_with_consent(as_registrar, newcomer, "GRANTED-1", "Registered by a granted registrar", 5)
    assert env.ledger.institution(newcomer.address).status == "active"

    assert env.ledger.transactor is not None
    receipt = env.ledger.transactor.transact(functions.revokeRole(role_id, registrar.address))
    assert event_args(env.ledger, receipt, "RoleRevoked") == [
        {"role": role_id, "account": registrar.address, "sender": env.admin.address}
    ]
    assert not functions.hasRole(role_id, registrar.address).call()
    fn = functions.registerInstitution(Account.create().address, code_to_bytes32("REVOKED-1"), "x", 1, 2**40, b"")
    error = expect_revert(env.ledger, fn, sender=registrar.address)
    assert (error.error_name, error.error_args) == (
        "AccessControlUnauthorizedAccount",
        {"account": registrar.address, "neededRole": hex32(role_id)},
    )


def test_an_account_renounces_its_own_role(cast: RoleCast, env: LedgerEnv) -> None:
    tariff_holder = cast.only["TARIFF_ROLE"]
    role_id = cast.role_ids["TARIFF_ROLE"]
    as_holder = env.as_account(tariff_holder)
    assert as_holder.transactor is not None
    functions = env.ledger.contract.functions

    receipt = as_holder.transactor.transact(functions.renounceRole(role_id, tariff_holder.address))

    assert event_args(env.ledger, receipt, "RoleRevoked") == [
        {"role": role_id, "account": tariff_holder.address, "sender": tariff_holder.address}
    ]
    assert not functions.hasRole(role_id, tariff_holder.address).call()
    error = expect_revert(env.ledger, functions.setPlatformFee(1), sender=tariff_holder.address)
    assert error.error_name == "AccessControlUnauthorizedAccount"


def test_the_admin_role_is_handed_over_in_two_steps_after_the_delay(cast: RoleCast, env: LedgerEnv) -> None:
    successor = Account.create()
    admin_id = cast.role_ids[ADMIN_ROLE]
    functions = env.ledger.contract.functions
    delay = functions.defaultAdminDelay().call()
    assert delay > 0
    assert env.ledger.transactor is not None
    env.ledger.transactor.transact(functions.beginDefaultAdminTransfer(successor.address))
    as_successor = env.as_account(successor)
    assert as_successor.transactor is not None
    error = expect_revert(env.ledger, functions.acceptDefaultAdminTransfer(), sender=successor.address)
    assert error.error_name == "AccessControlEnforcedDefaultAdminDelay"  # not before the delay
    env.w3.provider.make_request("evm_increaseTime", [delay + 1])  # type: ignore[arg-type]
    env.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    as_successor.transactor.transact(functions.acceptDefaultAdminTransfer())

    assert functions.defaultAdmin().call() == successor.address
    assert not functions.hasRole(admin_id, env.admin.address).call()
    error = expect_revert(env.ledger, functions.grantRole(cast.role_ids["PAUSER_ROLE"], env.admin.address))
    assert (error.error_name, error.error_args) == (
        "AccessControlUnauthorizedAccount",
        {"account": env.admin.address, "neededRole": hex32(admin_id)},
    )
    as_successor.grant_role("pauser", cast.outsider.address)
    assert functions.hasRole(cast.role_ids["PAUSER_ROLE"], cast.outsider.address).call()
