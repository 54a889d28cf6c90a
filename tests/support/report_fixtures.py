"""The `cli_workspace` fixture, loaded with `pytest_plugins = ("tests.support.report_fixtures",)`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medmeter.chain.deployment import record_deployment
from medmeter.signing.wallets import KeystoreDirectory
from medmeter.workspace import Workspace
from tests.support.chains import LedgerEnv
from tests.support.reports import PASSWORD, SCRYPT_N, CliWorkspace


@pytest.fixture
def cli_workspace(env: LedgerEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliWorkspace]:
    """A workspace holding the env's deployment and the admin (every role) as keystore `operator`;
    MEDMETER_* variables point the CLI at it and at the test anvil."""
    workspace = Workspace(tmp_path / "workspace")
    record_deployment(workspace, env.ledger.deployment)
    keystores = KeystoreDirectory(workspace.keystore_dir, lambda _name: PASSWORD, SCRYPT_N)
    keystores.create("operator", env.admin.key)
    rpc_url = env.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    monkeypatch.setenv("MEDMETER_HOME", str(workspace.root))
    monkeypatch.setenv("MEDMETER_RPC_URL", rpc_url)
    monkeypatch.setenv("MEDMETER_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDMETER_SCRYPT_N", str(SCRYPT_N))
    yield CliWorkspace(workspace.root, rpc_url)
