"""Driving the real `medmeter` console script in throwaway workspaces, against a real anvil.

A workspace is a temporary folder with a snapshot of contracts/, links to tools/, node_modules/
and package-lock.json, and the compiled ledger seeded into its artifact cache (compiling with
viaIR takes a while; the snapshot is exactly what was compiled). Its subprocesses get their own
HOME, so anvils killed by the fault tests leave nothing under the user's ~/.foundry.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from medmeter.signing.interaction import SignedInteraction, parse_signed
from medmeter.toolchain.compiler import Artifact, _source_hash, compile_ledger, standard_json_input
from medmeter.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
MEDMETER = REPO_ROOT / ".venv" / "bin" / "medmeter"
PASSWORD = "cli-test-password"
COMMAND_TIMEOUT_SECONDS = 300
RPC_URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)$")
CLEARED_ENV = ("MEDMETER_RPC_URL", "MEDMETER_RPC_TIMEOUT", "MEDMETER_HOME", "MEDMETER_KEYSTORE_PASSWORD")


@dataclass(frozen=True)
class LedgerBuild:
    """Contract sources and the artifact compiled from exactly those sources."""

    sources: dict[str, str]  # "contracts/X.sol" -> text
    artifact: Artifact


@functools.cache
def ledger_build() -> LedgerBuild:
    """Compile the repository's ledger once per process; retry if its sources change meanwhile."""
    repo = Workspace(REPO_ROOT)
    for _ in range(5):
        compiler_input = standard_json_input(repo)
        expected = _source_hash(compiler_input, repo)
        artifact = compile_ledger(repo)
        if artifact.source_hash == expected:
            sources = {name: entry["content"] for name, entry in compiler_input["sources"].items()}
            return LedgerBuild(sources, artifact)
    raise RuntimeError("contracts/ kept changing while the test suite compiled it")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.strip().splitlines()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]

    def describe(self) -> str:
        return (
            f"medmeter {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def assert_clean_error(result: Result, *fragments: str, exit_code: int | None = None) -> str:
    """A refusal as the house style wants it: non-zero exit, exactly one `error:` line that holds
    every fragment, no Python traceback. Returns the error line."""
    assert result.returncode != 0, result.describe()
    if exit_code is not None:
        assert result.returncode == exit_code, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert len(result.error_lines) == 1, result.describe()
    line = result.error_lines[0]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}\n{result.describe()}"
    return line


class CliWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / ".home"

    @property
    def state_dir(self) -> Path:
        return self.root / ".medmeter"

    @property
    def devnet_json(self) -> Path:
        return self.state_dir / "devnet" / "devnet.json"

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        env |= {
            "MEDMETER_HOME": str(self.root),
            "MEDMETER_KEYSTORE_PASSWORD": PASSWORD,
            "MEDMETER_SCRYPT_N": "1024",
            "HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(
        self,
        *args: object,
        expect: int | None = 0,
        env: dict[str, str | None] | None = None,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> Result:
        """Run `medmeter ARGS`; check the exit code (unless `expect` is None) and that no traceback leaked."""
        argv = tuple(str(a) for a in args)
        completed = subprocess.run(
            [str(MEDMETER), *argv],
            cwd=self.root,
            env=self.env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(argv, completed.returncode, completed.stdout, completed.stderr)
        assert "Traceback" not in result.stderr, result.describe()
        if expect is not None:
            assert result.returncode == expect, result.describe()
        return result

    def popen(self, *args: object, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(MEDMETER), *(str(a) for a in args)], cwd=self.root, env=self.env(), stdout=stdout, stderr=stderr
        )

    # ------------------------------------------------------------------ the devnet

    def up(self) -> str:
        """`medmeter devnet up`; returns the RPC URL it printed last."""
        result = self.run("devnet", "up")
        url = result.lines[-1]
        assert RPC_URL_LINE.match(url), result.describe()
        return url

    def devnet_info(self) -> dict[str, Any]:
        return json.loads(self.devnet_json.read_text())

    def rpc_url(self) -> str:
        return str(self.devnet_info()["rpc_url"])

    def w3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url(), request_kwargs={"timeout": 60}))

    def close(self) -> None:
        """Stop the devnet; kill anvil if `devnet down` did not (or could not) stop it."""
        if not self.devnet_json.is_file():
            return
        pid = int(self.devnet_info()["pid"])
        subprocess.run(
            [str(MEDMETER), "devnet", "down"], cwd=self.root, env=self.env(), capture_output=True, timeout=120
        )
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ the ledger

    def deployment(self, chain_id: int = 31337) -> dict[str, Any]:
        return json.loads((self.root / "deployments" / f"{chain_id}.json").read_text())

    def ledger(self, w3: Web3 | None = None) -> Any:
        deployment = self.deployment()
        return (w3 or self.w3()).eth.contract(address=deployment["address"], abi=deployment["abi"])

    def account(self, wallet: str) -> LocalAccount:
        keystore = json.loads((self.state_dir / "keystores" / f"{wallet}.json").read_text())
        return Account.from_key(Account.decrypt(keystore, PASSWORD))

    def recorded(self, w3: Web3 | None = None) -> list[dict[str, Any]]:
        """Every InteractionRecorded event of the deployed ledger, decoded by web3 from the ABI."""
        ledger = self.ledger(w3)
        logs = ledger.events.InteractionRecorded().get_logs(from_block=self.deployment()["block"])
        return [dict(log["args"]) for log in logs]


def make_workspace(root: Path) -> CliWorkspace:
    """A fresh workspace at `root` (which must not exist), with the compiled ledger seeded."""
    build = ledger_build()
    root.mkdir(parents=True)
    for name, text in build.sources.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for name in ("tools", "node_modules", "package-lock.json"):
        (root / name).symlink_to(REPO_ROOT / name)
    workspace = Workspace(root)
    seeded = dict(build.artifact.__dict__)
    seeded["source_hash"] = _source_hash(standard_json_input(workspace), workspace)
    workspace.artifacts_dir.mkdir(parents=True)
    (workspace.artifacts_dir / f"{build.artifact.contract_name}.json").write_text(json.dumps(seeded))
    cli = CliWorkspace(root)
    cli.home.mkdir()
    return cli


@dataclass(frozen=True)
class Institution:
    wallet: str
    code: str
    address: str


def register(
    cli: Any,
    wallet: str,
    code: str,
    name: str,
    credit_line: int = 0,
    *,
    expect: int | None = 0,
    folder: Path | None = None,
) -> Result:
    """The documented registration: the clinic makes its key and signs its consent (`medmeter consent`),
    the registrar submits it (`institution register FILE`). `cli` is anything with `run` (and `root`)."""
    cli.run("wallet", "new", wallet)
    consent = (folder or cli.root) / f"consent-{wallet}-{code}.json"
    cli.run("consent", "--wallet", wallet, "--code", code, "--name", name, "-o", consent)
    return cli.run("institution", "register", consent, "--credit-line", credit_line, expect=expect)


def deployed_workspace(root: Path, institutions: Sequence[tuple[str, str, int]]) -> CliWorkspace:
    """Devnet up, operator, ledger deployed, default tariff, and `institutions` (wallet, code, credit
    line) registered, all through the console script."""
    cli = make_workspace(root)
    try:
        cli.up()
        cli.run("wallet", "new", "operator")
        cli.run("deploy")
        cli.run("tariff", "default")
        for wallet, code, credit_line in institutions:
            register(cli, wallet, code, f"{code} Clinic", credit_line)
    except BaseException:
        cli.close()
        raise
    return cli


def read_items(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_items(path: Path, items: Sequence[dict[str, Any] | str]) -> None:
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))


def parsed(item: dict[str, Any]) -> SignedInteraction:
    return parse_signed(item, "test item")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def poll(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until `predicate()` holds; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def snapshot(paths: Iterator[Path] | Sequence[Path]) -> dict[Path, bytes | None]:
    """The bytes of each file (None if absent), to prove a failed command changed nothing."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in paths}


def craft(
    cli: CliWorkspace,
    wallet: str,
    kind: str,
    *,
    nonce: int,
    records: int = 2,
    category: int = 2,
    counterparty: str | None = None,
    chain_id: int | None = None,
    data: bytes = b"crafted payload",
) -> dict[str, Any]:
    """An interaction signed in the test with the wallet's keystore key, as `medmeter sign` writes it.

    Tests use nonces far above the nonce book's so they never collide with `sign` or `simulate`."""
    from medmeter.intake.payload import content_hash
    from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, Kind, sign_interaction

    account = cli.account(wallet)
    deployment = cli.deployment()
    kind_value = Kind.parse(kind)
    sync_rate, fetch_rate, _ = cli.ledger().functions.rateOf(category).call()  # (0, 0) without a tariff
    interaction = Interaction(
        kind=kind_value,
        institution=account.address,
        counterparty=counterparty or ZERO_ADDRESS,
        category=category,
        records=records,
        units=records * (sync_rate if kind_value is Kind.SYNC else fetch_rate),
        data_hash=content_hash(data + nonce.to_bytes(32, "big")),
        nonce=nonce,
        deadline=int(time.time()) + 30 * 24 * 3600,
    )
    domain = Domain(chain_id or deployment["chain_id"], Web3.to_checksum_address(deployment["address"]))
    return sign_interaction(interaction, domain, account).to_json()
