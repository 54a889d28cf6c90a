"""`simulate` refuses what it cannot simulate with one sentence (it used to raise ValueError)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli import CliWorkspace, assert_clean_error, make_workspace, register


@pytest.fixture(scope="module")
def untariffed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    """A deployed ledger with two institutions and no tariff yet."""
    cli = make_workspace(tmp_path_factory.mktemp("simulate") / "ws")
    try:
        cli.up()
        cli.run("wallet", "new", "operator")
        cli.run("deploy")
        for wallet, code in (("clinic-a", "SIM-A"), ("clinic-b", "SIM-B")):
            register(cli, wallet, code, f"{code} Clinic")
        yield cli
    finally:
        cli.close()


def test_simulate_refuses_without_a_tariff_and_with_one_institution(untariffed: CliWorkspace):
    """One test, in this order: the second case needs the tariff the first one must not have."""
    out = untariffed.root / "traffic.jsonl"
    result = untariffed.run("simulate", "--count", "5", "-o", out, expect=1)
    assert_clean_error(result, "no tariff is set", "medmeter tariff default")
    assert not out.exists()

    untariffed.run("tariff", "default")
    result = untariffed.run("simulate", "--count", "5", "--wallet", "clinic-a", "-o", out, expect=1)
    assert_clean_error(result, "at least two institutions", "--wallet")
    assert not out.exists()
