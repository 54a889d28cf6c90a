"""Nothing is writable by an account without its role: checked for every state-changing function of the ABI.

The role each function needs is written down here (REQUIRED_ROLE); a test holds that map against the ABI,
so a state-changing function added to the contract without an entry fails the suite instead of escaping it.
Every function is then called (eth_call) by every kind of account that lacks its role: each institution, an
outsider, an account holding every other role, and one holder of each other single role.
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
from tests.support.chains import LedgerEnv, deploy_env, event_args, expect_revert, hex32, rolled_back

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
    "rotateSigner": "REGISTRAR_ROLE",
    "setCreditLine": "REGISTRAR_ROLE",
    "setRate": "TARIFF_ROLE",
    "setPlatformFee": "TARIFF_ROLE",
    "recordInteraction": "RELAYER_ROLE",
    "recordBatch": "RELAYER_ROLE",
    "closePeriod": "SETTLER_ROLE",
    "anchorSettlement": "SETTLER_ROLE",
    "pause": "PAUSER_ROLE",
    "unpause": "PAUSER_ROLE",
    "grantRole": ADMIN_ROLE,
    "revokeRole": ADMIN_ROLE,
}
# Functions any account may call, but only about itself.
SELF_ONLY = {"renounceRole"}


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
    only = {role: Account.create() for role in ALL_ROLES}
    all_but = {role: Account.create() for role in ALL_ROLES}
    for role in ALL_ROLES:
        env.ledger.grant_role(client_role_name(role), only[role].address)
        for other in ALL_ROLES:
            if other != role:
                env.ledger.grant_role(client_role_name(other), all_but[role].address)
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
    assert set(REQUIRED_ROLE) | SELF_ONLY == in_abi
    assert not set(REQUIRED_ROLE) & SELF_ONLY


def test_the_client_role_names_are_the_contracts_roles(cast: RoleCast) -> None:
    assert set(ROLES) == set(OPERATING_ROLES)
    for role in OPERATING_ROLES:
        assert cast.role_ids[role] == keccak(text=role) == cast.env.ledger.role_id(role)
    assert cast.role_ids[ADMIN_ROLE] == b"\0" * 32 == cast.env.ledger.role_id("admin")


def test_every_role_is_administered_by_the_admin_role(cast: RoleCast) -> None:
    functions = cast.env.ledger.contract.functions
    for role in ALL_ROLES:
        assert functions.getRoleAdmin(cast.role_ids[role]).call() == cast.role_ids[ADMIN_ROLE]


def test_the_deployer_holds_every_role_and_the_cast_holds_what_it_should(cast: RoleCast) -> None:
    has_role = cast.env.ledger.contract.functions.hasRole
    for role in ALL_ROLES:
        role_id = cast.role_ids[role]
        assert has_role(role_id, cast.env.admin.address).call()
        for other in ALL_ROLES:
            assert has_role(role_id, cast.only[other].address).call() == (other == role)
            assert has_role(role_id, cast.all_but[other].address).call() == (other != role)
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
    target = cast.env.admin.address  # holds every role
    for label, caller in cast.every_account().items():
        fn = cast.env.ledger.contract.functions.renounceRole(cast.role_ids[role], target)
        error = expect_revert(cast.env.ledger, fn, sender=caller)
        assert (error.error_name, error.error_args) == ("AccessControlBadConfirmation", {}), label


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
    newcomer = Account.create().address
    as_registrar.register(newcomer, "GRANTED-1", "Registered by a granted registrar", 5)
    assert env.ledger.institution(newcomer).status == "active"

    assert env.ledger.transactor is not None
    receipt = env.ledger.transactor.transact(functions.revokeRole(role_id, registrar.address))
    assert event_args(env.ledger, receipt, "RoleRevoked") == [
        {"role": role_id, "account": registrar.address, "sender": env.admin.address}
    ]
    assert not functions.hasRole(role_id, registrar.address).call()
    fn = functions.registerInstitution(Account.create().address, code_to_bytes32("REVOKED-1"), "x", 1)
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


def test_the_admin_role_can_be_handed_over(cast: RoleCast, env: LedgerEnv) -> None:
    successor = Account.create()
    admin_id = cast.role_ids[ADMIN_ROLE]
    functions = env.ledger.contract.functions
    env.ledger.grant_role("admin", successor.address)
    assert env.ledger.transactor is not None
    env.ledger.transactor.transact(functions.renounceRole(admin_id, env.admin.address))

    assert not functions.hasRole(admin_id, env.admin.address).call()
    error = expect_revert(env.ledger, functions.grantRole(cast.role_ids["PAUSER_ROLE"], env.admin.address))
    assert (error.error_name, error.error_args) == (
        "AccessControlUnauthorizedAccount",
        {"account": env.admin.address, "neededRole": hex32(admin_id)},
    )
    as_successor = env.as_account(successor)
    as_successor.grant_role("pauser", cast.outsider.address)
    assert functions.hasRole(cast.role_ids["PAUSER_ROLE"], cast.outsider.address).call()
    # the former admin keeps its operating roles: renouncing one role does not touch the others
    assert functions.hasRole(cast.role_ids["REGISTRAR_ROLE"], env.admin.address).call()
