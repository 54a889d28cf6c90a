"""Shared fixtures: a real anvil from node_modules on a free port, and freshly deployed ledgers.

The suite runs with brownie's pytest plugin disabled (see pyproject addopts); the brownie
tests under tests/brownie run through `brownie test` instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from medmeter.chain.rpc import connect
from medmeter.toolchain.compiler import Artifact, compile_ledger
from medmeter.toolchain.devnet import free_port, rpc_ready
from medmeter.toolchain.executables import anvil_executable
from medmeter.workspace import Workspace
from tests.support.chains import LedgerEnv, deploy_env

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if "brownie" in collection_path.parts and collection_path.is_relative_to(REPO_ROOT / "tests" / "brownie"):
        return not config.pluginmanager.hasplugin("pytest-brownie")
    return None


@pytest.fixture(scope="session")
def workspace() -> Workspace:
    return Workspace(REPO_ROOT)


@pytest.fixture(scope="session")
def artifact(workspace: Workspace) -> Artifact:
    return compile_ledger(workspace)


def start_anvil(workspace: Workspace, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port(0)
    process = subprocess.Popen(
        [
            str(anvil_executable(workspace)),
            "--port",
            str(port),
            "--silent",
            "--accounts",
            "1",
            "--gas-limit",
            "60000000",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    from medmeter.chain.rpc import wait_until

    if not wait_until(lambda: rpc_ready(url), 30):
        process.kill()
        raise RuntimeError("anvil did not start")
    return process, url


@pytest.fixture(scope="session")
def anvil(workspace: Workspace) -> Iterator[str]:
    process, url = start_anvil(workspace)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def w3(anvil: str) -> Web3:
    return connect(anvil)


@pytest.fixture
def env(w3: Web3, artifact: Artifact) -> Iterator[LedgerEnv]:
    """A fresh ledger with default tariff and three active institutions (credit line 1,000).

    The chain is rolled back after the test: anvil slows down as its chain grows (deploying took
    0.15 s on a new chain and 0.7 s past ~400 blocks), so every test starts from the same height."""
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield deploy_env(w3, artifact)
    w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


@pytest.fixture
def fresh_account() -> Account:
    return Account.create()
