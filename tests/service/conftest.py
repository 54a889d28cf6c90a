"""A real `medmeter serve` process on a free port, against a real anvil and a freshly deployed ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3

from medmeter.chain.rpc import connect
from medmeter.signing.interaction import Kind, SignedInteraction, iter_json_lines
from medmeter.signing.wallets import KeystoreDirectory
from medmeter.toolchain.compiler import Artifact
from medmeter.toolchain.devnet import free_port
from medmeter.workspace import Workspace
from tests.conftest import REPO_ROOT, start_anvil
from tests.support.chains import LedgerEnv, deploy_env

MEDMETER = REPO_ROOT / ".venv" / "bin" / "medmeter"
PASSWORD = "service-test-password"


def body(items: list[SignedInteraction]) -> list[dict]:
    return [json.loads(line) for line in iter_json_lines(items)]


@dataclass
class Server:
    root: Path
    rpc_url: str
    deployment: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDMETER_")}
        env |= {
            "MEDMETER_HOME": str(self.root),
            "MEDMETER_KEYSTORE_PASSWORD": PASSWORD,
            "MEDMETER_SCRYPT_N": "1024",
            **self.env_extra,
        }
        return env

    def start(self) -> None:
        if not self.port:
            self.port = free_port(0)
        log = (self.root / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(MEDMETER),
                "--rpc-url",
                self.rpc_url,
                "--deployment",
                str(self.deployment),
                "serve",
                "--port",
                str(self.port),
                *self.extra,
            ],
            cwd=self.root,
            env=self.env(),
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "serve.log").read_text()
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("the service did not start: " + (self.root / "serve.log").read_text())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def post(self, items: list[SignedInteraction] | list[dict], **kwargs: object) -> requests.Response:
        payload = body(items) if items and isinstance(items[0], SignedInteraction) else items  # type: ignore[arg-type]
        return requests.post(self.url + "/v1/interactions", json=payload, timeout=120, **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, **params: object) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=60)  # type: ignore[arg-type]

    def wait_final(self, ids: list[str], timeout: float = 120) -> dict[str, dict]:
        """Poll GET until every id left queued/sent; returns their answers."""
        deadline = time.monotonic() + timeout
        answers: dict[str, dict] = {}
        while time.monotonic() < deadline:
            for item_id in ids:
                if item_id in answers:
                    continue
                answer = self.get(f"/v1/interactions/{item_id}").json()
                if answer.get("status") not in ("queued", "sent"):
                    answers[item_id] = answer
            if len(answers) == len(ids):
                return answers
            time.sleep(0.2)
        raise AssertionError(f"{len(ids) - len(answers)} items not final after {timeout} s")


@dataclass
class ServiceEnv:
    env: LedgerEnv
    server: Server
    anvil: subprocess.Popen[bytes]

    def signed(self, kind: Kind, who: LocalAccount, **fields: object) -> SignedInteraction:
        return self.env.signed(kind, who, **fields)  # type: ignore[arg-type]


def make_workspace(root: Path, env: LedgerEnv) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    keystores = KeystoreDirectory(Workspace(root).keystore_dir, lambda _name: PASSWORD, 1024)
    keystores.create("operator", private_key=env.admin.key)
    deployment = root / "deployment.json"
    deployment.write_text(json.dumps(env.ledger.deployment.to_json()))
    return deployment


@pytest.fixture
def service_env(tmp_path: Path, workspace: Workspace, artifact: Artifact) -> Iterator[ServiceEnv]:
    """Its own anvil (tests stop and restart nodes and servers) with a fresh ledger and a running service."""
    anvil, url = start_anvil(workspace)
    w3: Web3 = connect(url)
    env = deploy_env(w3, artifact)
    deployment = make_workspace(tmp_path / "platform", env)
    server = Server(tmp_path / "platform", url, deployment)
    server.start()
    try:
        yield ServiceEnv(env, server, anvil)
    finally:
        server.stop()
        anvil.kill()
        anvil.wait(10)
