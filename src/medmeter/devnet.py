"""The managed local devnet: anvil from node_modules, its state persisted under `.medmeter/devnet/`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from medmeter.errors import MedmeterError
from medmeter.fileio import write_json_atomic
from medmeter.toolchain import anvil_executable
from medmeter.workspace import Workspace

CHAIN_ID = 31337
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
# Anvil dumps its state on a clean exit; the interval bounds what a SIGKILL can lose.
STATE_INTERVAL_SECONDS = 2
BLOCK_GAS_LIMIT = 60_000_000
# Not 8545: brownie attaches to whatever listens there and would run its tests on our ledger.
PREFERRED_PORT = 8600


@dataclass(frozen=True)
class DevnetInfo:
    pid: int
    port: int
    rpc_url: str
    state_file: str
    log_file: str
    started_at: float


def _info_path(workspace: Workspace) -> Path:
    return workspace.devnet_dir / "devnet.json"


def read_info(workspace: Workspace) -> DevnetInfo | None:
    path = _info_path(workspace)
    if not path.is_file():
        return None
    try:
        return DevnetInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check its state.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    except OSError:
        return True


def rpc_ready(rpc_url: str) -> bool:
    try:
        response = requests.post(
            rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=2
        )
        return response.ok and "result" in response.json()
    except (requests.RequestException, ValueError):
        return False


def is_running(workspace: Workspace) -> DevnetInfo | None:
    info = read_info(workspace)
    if info and _pid_alive(info.pid) and rpc_ready(info.rpc_url):
        return info
    return None


def free_port(preferred: int = PREFERRED_PORT) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise MedmeterError("no free TCP port on 127.0.0.1: stop another local node and retry.")


def anvil_command(workspace: Workspace, port: int, state_file: Path | None) -> list[str]:
    command = [
        str(anvil_executable(workspace)),
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
    ]
    if state_file is not None:
        command += ["--state", str(state_file), "--state-interval", str(STATE_INTERVAL_SECONDS)]
    return command


def up(workspace: Workspace, port: int | None = None) -> tuple[DevnetInfo, bool]:
    """Start anvil in the background, or reuse the one running. Returns (info, started)."""
    if running := is_running(workspace):
        return running, False
    workspace.devnet_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    state_file = workspace.devnet_dir / "state.json"
    log_file = workspace.devnet_dir / "anvil.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            anvil_command(workspace, port, state_file),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the medmeter process and its terminal
        )
    rpc_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MedmeterError(
                f"anvil exited with code {process.returncode} while starting: see {log_file}. If the state file "
                f"{state_file} is damaged, move it away and run `medmeter devnet up` again."
            )
        if rpc_ready(rpc_url):
            info = DevnetInfo(process.pid, port, rpc_url, str(state_file), str(log_file), time.time())
            write_json_atomic(_info_path(workspace), asdict(info))
            return info, True
        time.sleep(0.1)
    process.kill()
    raise MedmeterError(f"anvil did not answer on {rpc_url} within {START_TIMEOUT_SECONDS} s: see {log_file}.")


def down(workspace: Workspace) -> DevnetInfo | None:
    """Stop the devnet; anvil writes its state on SIGTERM. Returns what was stopped, or None."""
    info = read_info(workspace)
    if info is None or not _pid_alive(info.pid):
        _info_path(workspace).unlink(missing_ok=True)
        return None
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    _reap(info.pid)
    _info_path(workspace).unlink(missing_ok=True)
    return info


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
