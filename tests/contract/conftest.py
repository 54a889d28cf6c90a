"""Contract-level tests run on an anvil per module (these fixtures override the root conftest's):
a module's chain stays short, and anvil gets slower as its chain grows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from medmeter.chain.rpc import connect
from medmeter.toolchain.compiler import Artifact
from medmeter.workspace import Workspace
from tests.support.chains import LedgerEnv, deploy_env, private_chain, rolled_back


@pytest.fixture(scope="module")
def anvil(workspace: Workspace) -> Iterator[str]:
    yield from private_chain(workspace)


@pytest.fixture(scope="module")
def w3(anvil: str) -> Web3:
    return connect(anvil)


@pytest.fixture(scope="module")
def deployed_env(w3: Web3, artifact: Artifact) -> LedgerEnv:
    """Read-only tests use this ledger as deployed; tests that record take `env` and are rolled back."""
    return deploy_env(w3, artifact)


@pytest.fixture
def env(deployed_env: LedgerEnv) -> Iterator[LedgerEnv]:
    """The module's ledger in its just-deployed state (default tariff, three institutions), rolled back after."""
    with rolled_back(deployed_env) as fresh:
        yield fresh
