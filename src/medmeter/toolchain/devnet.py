"""The managed local devnet: anvil from node_modules, its state persisted under `.medmeter/devnet/`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from medmeter.errors import MedmeterError
from medmeter.fileio import write_json_atomic
from medmeter.toolchain.executables import anvil_executable
from medmeter.workspace import Workspace

CHAIN_ID = 31337
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
# Anvil dumps its state on a clean exit; the interval bounds what a SIGKILL can lose.
STATE_INTERVAL_SECONDS = 2
BLOCK_GAS_LIMIT = 60_000_000
# Not 8545: brownie attaches to whatever listens there and would run its tests on our ledger.
PREFERRED_PORT = 8600
# Ports tried when none is given: another process may take a free port before anvil binds it.
PORT_ATTEMPTS = 3


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
        # Historical states too: reports and statements read balances at a period's closing
        # block, which a restarted anvil could not answer without them.
        command += [
            "--state",
            str(state_file),
            "--state-interval",
            str(STATE_INTERVAL_SECONDS),
            "--preserve-historical-states",
        ]
    return command


class _PortTaken(Exception):
    """anvil could not bind its port: another process took it."""


def up(
    workspace: Workspace, port: int | None = None, warn: Callable[[str], object] | None = None
) -> tuple[DevnetInfo, bool]:
    """Start anvil in the background, or reuse the one running. Returns (info, started).

    A state file damaged by a kill during anvil's periodic write is replaced by the copy taken
    at the last start, and `warn` is told what was lost."""
    if running := is_running(workspace):
        return running, False
    workspace.devnet_dir.mkdir(parents=True, exist_ok=True)
    state_file = workspace.devnet_dir / "state.json"
    log_file = workspace.devnet_dir / "anvil.log"
    _check_state(state_file, warn)
    candidates = [port] if port else [free_port(), *(free_port(0) for _ in range(PORT_ATTEMPTS - 1))]
    for candidate in candidates:
        try:
            info = _start(workspace, candidate, state_file, log_file)
        except _PortTaken:
            continue
        write_json_atomic(_info_path(workspace), asdict(info))
        return info, True
    raise MedmeterError(
        f"anvil could not bind port {', '.join(map(str, candidates))} (in use): stop the other process or pass "
        "another --port."
    )


def _start(workspace: Workspace, port: int, state_file: Path, log_file: Path) -> DevnetInfo:
    log_offset = log_file.stat().st_size if log_file.exists() else 0
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
            with log_file.open("rb") as log:
                log.seek(log_offset)
                output = log.read().decode(errors="replace")
            if "Address already in use" in output:
                raise _PortTaken(port)
            raise MedmeterError(
                f"anvil exited with code {process.returncode} while starting: see {log_file}. If the state file "
                f"{state_file} is damaged, move it away and run `medmeter devnet up` again."
            )
        # Another node that took the port first also answers: wait until ours does (or exits).
        if rpc_ready(rpc_url) and _listens_on(process.pid, port) is not False:
            return DevnetInfo(process.pid, port, rpc_url, str(state_file), str(log_file), time.time())
        time.sleep(0.1)
    process.kill()
    raise MedmeterError(f"anvil did not answer on {rpc_url} within {START_TIMEOUT_SECONDS} s: see {log_file}.")


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds the listening TCP socket on `port`; None where /proc cannot tell."""
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except (OSError, IndexError, ValueError):
        return None
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in inodes:
                return True
    return False


def last_good_state(state_file: Path) -> Path:
    """The copy of the state file taken at the last start, when it was known to load."""
    return state_file.with_name(f"{state_file.stem}.last-good{state_file.suffix}")


def _check_state(state_file: Path, warn: Callable[[str], object] | None) -> None:
    """Keep a copy of a state file that parses; replace a damaged one by that copy.

    anvil rewrites its state file in place every STATE_INTERVAL_SECONDS, so a SIGKILL (or a
    power cut) in the middle of a write leaves it truncated, and anvil refuses to start."""
    if not state_file.is_file():
        return
    backup = last_good_state(state_file)
    try:
        if not _looks_complete(state_file):  # cheap for large states; confirmed by a full parse
            with state_file.open("rb") as handle:
                json.load(handle)
    except (ValueError, UnicodeDecodeError) as exc:
        if not backup.is_file():
            raise MedmeterError(
                f"the devnet state {state_file} is damaged ({exc}) and there is no earlier copy: move it away and "
                "run `medmeter devnet up` again for a fresh chain."
            ) from None
        damaged = state_file.with_name(f"{state_file.stem}.damaged-{int(time.time())}{state_file.suffix}")
        state_file.replace(damaged)
        _copy_atomic(backup, state_file)
        if warn is not None:
            saved_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
            warn(
                f"the devnet state was damaged (anvil was stopped while writing it; kept as {damaged.name}): "
                f"restored the copy from the last start ({saved_at}). Transactions since then are gone: run them "
                "again (`medmeter relay` skips what is recorded)."
            )
        return
    _copy_atomic(state_file, backup)


def _looks_complete(path: Path) -> bool:
    """True if the JSON document's brackets balance and it ends with one: a truncated write does not."""
    depth, last = 0, b""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            depth += chunk.count(b"{") - chunk.count(b"}") + chunk.count(b"[") - chunk.count(b"]")
            if stripped := chunk.rstrip():
                last = stripped[-1:]
    return depth == 0 and last in (b"}", b"]")


def _copy_atomic(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


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
