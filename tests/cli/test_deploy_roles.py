"""`medmeter deploy --roles FILE`: each operating role to its own key, through the real console script."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from eth_utils import keccak

from medmeter.toolchain.devnet import free_port
from tests.support.cli import CliWorkspace, assert_clean_error, make_workspace, register


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = make_workspace(tmp_path_factory.mktemp("roles") / "ws")
    try:
        cli.up()
        for wallet in ("operator", "registrar", "relayer", "settler"):
            cli.run("wallet", "new", wallet)
    except BaseException:
        cli.close()
        raise
    yield cli
    cli.close()


def has_role(ws: CliWorkspace, role: str, who: str) -> bool:
    return bool(ws.ledger().functions.hasRole(keccak(text=role), who).call())


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (
            '{"registrar": "0x1", "relayer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}',
            ("registrar", "not an Ethereum address"),
        ),
        ('{"auditor": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}', ("unknown role 'auditor'", "registrar, tariff")),
        ('{"admin": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}', ("deployer keeps the admin role",)),
        ('{"relayer": "0x70997970c51812DC3a010c7d01b50e0d17dc79c8"}', ("not an Ethereum address",)),  # bad checksum
        ('{"pauser": "0x0000000000000000000000000000000000000000"}', ("zero address",)),
        (
            '{"Relayer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", '
            '"RELAYER_ROLE": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}',
            ("given twice",),
        ),
        ("[1, 2]", ("one non-empty JSON object",)),
        ("{not json", ("is not JSON",)),
    ],
)
def test_a_bad_roles_file_is_refused_before_anything_is_deployed(
    ws: CliWorkspace, content: str, fragments: tuple[str, ...]
) -> None:
    path = ws.root / "bad-roles.json"
    path.write_text(content)
    deployments = ws.root / "deployments"
    before = sorted(deployments.iterdir()) if deployments.is_dir() else []
    result = ws.run("deploy", "--new", "--roles", path, expect=1)
    assert_clean_error(result, "bad-roles.json", *fragments)
    assert "MeteringLedger at" not in result.stdout
    assert (sorted(deployments.iterdir()) if deployments.is_dir() else []) == before


def test_deploy_hands_each_named_role_to_its_key_and_the_deployer_keeps_the_rest(ws: CliWorkspace) -> None:
    keys = {name: ws.account(name).address for name in ("operator", "registrar", "relayer", "settler")}
    roles = ws.root / "roles.json"
    roles.write_text(
        json.dumps(
            {"registrar": keys["registrar"], "RELAYER_ROLE": keys["relayer"].lower(), "Settler": keys["settler"]}
        )
    )
    out = ws.run("deploy", "--new", "--roles", roles).stdout
    assert f"registrar  {keys['registrar']}  (from roles.json; revoked from the deployer)" in out
    assert f"tariff     {keys['operator']}  (kept by the deployer: roles.json does not name it)" in out
    assert f"pauser     {keys['operator']}  (kept by the deployer" in out
    assert f"admin      {keys['operator']}" in out
    for role, holder in (("REGISTRAR_ROLE", "registrar"), ("RELAYER_ROLE", "relayer"), ("SETTLER_ROLE", "settler")):
        assert has_role(ws, role, keys[holder]), role
        assert not has_role(ws, role, keys["operator"]), f"the deployer still holds {role}"
    assert has_role(ws, "TARIFF_ROLE", keys["operator"]) and has_role(ws, "PAUSER_ROLE", keys["operator"])
    assert ws.ledger().functions.defaultAdmin().call() == keys["operator"]
    listed = ws.run("roles", "list").stdout
    assert any(line.startswith("registrar") and keys["registrar"] in line for line in listed.splitlines()), listed

    # the deployer can no longer register an institution; the registrar's key can
    refused = register(ws, "clinic-a", "ROLE-A", "Role Clinic A", expect=1)
    assert_clean_error(refused, "AccessControlUnauthorizedAccount", keys["operator"])
    consent = ws.root / "consent-clinic-a-ROLE-A.json"
    ws.run("institution", "register", consent, "--operator", "registrar")
    assert "ROLE-A" in ws.run("institution", "list").stdout
    ws.run("tariff", "default")  # the deployer kept the tariff role

    # a ledger is live now: the same roles file keeps it (its roles already are as the file says) ...
    kept = ws.run("deploy", "--roles", roles)
    assert "kept it; its roles already are as roles.json says" in kept.stdout, kept.describe()
    # ... a file the live ledger does not match would silently not apply, so it is refused, naming the role
    other = ws.root / "other-roles.json"
    other.write_text(json.dumps({"registrar": keys["settler"]}))
    again = ws.run("deploy", "--roles", other, expect=1)
    assert_clean_error(again, "already deployed", "registrar role", "--new", "medmeter roles grant")
    # keystore names stand for their addresses: the live ledger's roles, named by keystore, keep it too
    by_name = ws.root / "roles-by-name.json"
    by_name.write_text(json.dumps({"registrar": "registrar", "relayer": "relayer", "settler": "settler"}))
    assert "kept it; its roles already are" in ws.run("deploy", "--roles", by_name).stdout
    # the deployer holding a role again that the file hands to another key is not "as the file says"
    ws.run("roles", "grant", "registrar", keys["operator"])
    regranted = ws.run("deploy", "--roles", by_name, expect=1)
    assert_clean_error(regranted, "already deployed", "registrar role")
    ws.run("roles", "revoke", "registrar", keys["operator"])
    # the service will not acknowledge items it could not relay: the operator no longer holds the relayer role
    refused_service = ws.run("serve", "--port", free_port(0), expect=1)
    assert_clean_error(refused_service, "does not hold the relayer role", "--operator")
    unknown = ws.root / "roles-unknown-name.json"
    unknown.write_text(json.dumps({"registrar": "no-such-keystore"}))
    assert_clean_error(ws.run("deploy", "--roles", unknown, expect=1), "no-such-keystore", "wallet list")
