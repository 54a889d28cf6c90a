"""Running the service: configuration (flags > environment > medmeter.toml > defaults), the
foreground server, and the detached one with its pid file (like `medmeter devnet`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medmeter.contract.facts import MAX_BATCH_SIZE
from medmeter.errors import ServiceError

ENV_PREFIX = "MEDMETER_SERVICE_"
# Intake and the relayer share one interpreter; switching threads every 1 ms instead of Python's 5 ms
# keeps a POST from waiting behind the relayer's decoding of a settled batch. Measured with
# bench/service_bench.py (30,000 + 60,000 paced at 3,000/s, three runs each): acknowledged 3,944-4,090/s
# against 3,758-3,831/s, paced p99 87-99 ms against 88-115 ms.
GIL_SWITCH_INTERVAL_SECONDS = 0.001
CONFIG_FILE = "medmeter.toml"


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8700
    outbox: str = ""  # default: .medmeter/service/outbox.sqlite3
    batch_size: int = 100
    confirmations: int = 0
    queue_cap: int = 50_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 20_000
    log_level: str = "warning"

    @classmethod
    def load(cls, root: Path, flags: dict[str, Any]) -> ServiceConfig:
        config = cls()
        path = root / CONFIG_FILE
        table: dict[str, Any] = {}
        if path.is_file():
            try:
                table = tomllib.loads(path.read_text()).get("service", {})
            except tomllib.TOMLDecodeError as exc:
                raise ServiceError(f"{path} is not valid TOML ({exc}): fix its [service] table.") from None
            if not isinstance(table, dict):
                raise ServiceError(f"{path}: service is not a table: write its settings under a [service] line.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            # A misspelt setting silently ignored is a setting the operator believes is in force.
            raise ServiceError(
                f"{path}: unknown [service] setting(s) {', '.join(unknown)}: the settings are "
                f"{', '.join(sorted(known))}."
            )
        for f in fields(cls):
            value, source = flags.get(f.name), "the flag"
            if value is None:
                value, source = os.environ.get(ENV_PREFIX + f.name.upper()), f"${ENV_PREFIX}{f.name.upper()}"
            if value is None:
                value, source = table.get(f.name), f"[service] {f.name} in {CONFIG_FILE}"
            if value is None:
                continue
            setattr(config, f.name, _setting(f.name, value, type(getattr(config, f.name)), source))
        return config


# Bounds of the integer settings; the flags have the same, but the environment and the file do not.
INTEGER_RANGES = {
    "port": (1, 65535),
    "batch_size": (1, MAX_BATCH_SIZE),
    "confirmations": (0, 1_000),
    "queue_cap": (1, 10**9),
    "max_body_bytes": (1, 2**40),
    "max_items": (1, 10**7),
}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _setting(name: str, value: Any, kind: type, source: str) -> Any:
    """`value` of setting `name` as `kind`, or a ServiceError that names where it came from."""
    fix = f"fix {source}"
    if kind is int:
        # bool is an int in Python and 1.9 would truncate to 1: only whole numbers are taken.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ServiceError(f"service setting {name}={value!r} is not a whole number: {fix}.")
        low, high = INTEGER_RANGES.get(name, (0, 2**63))
        if not low <= value <= high:
            extra = (
                f" (the contract takes at most {MAX_BATCH_SIZE} interactions a transaction)"
                if name == "batch_size"
                else ""
            )
            raise ServiceError(f"service setting {name}={value} is outside {low}..{high}{extra}: {fix}.")
        return value
    if not isinstance(value, str):
        raise ServiceError(f"service setting {name}={value!r} is not text: {fix} (quote it in TOML).")
    if name == "log_level" and value.lower() not in LOG_LEVELS:
        raise ServiceError(f"service setting log_level={value!r} is not one of {', '.join(LOG_LEVELS)}: {fix}.")
    return value.lower() if name == "log_level" else value


def outbox_path(state_dir: Path, config: ServiceConfig) -> Path:
    return Path(config.outbox) if config.outbox else state_dir / "service" / "outbox.sqlite3"


def info_path(state_dir: Path) -> Path:
    return state_dir / "service" / "service.json"


def run(session: Any, config: ServiceConfig) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    from medmeter.service.app import Limits, Service, create_app
    from medmeter.service.metrics import Metrics
    from medmeter.service.outbox import Outbox
    from medmeter.service.relayer import Relayer

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ledger = session.ledger()
    state_dir = session.workspace.state_dir
    outbox = Outbox(outbox_path(state_dir, config))
    metrics = Metrics()
    relayer = Relayer(ledger, outbox, metrics, batch_size=config.batch_size, confirmations=config.confirmations)
    limits = Limits(config.max_body_bytes, config.max_items, config.queue_cap)
    service = Service(ledger, outbox, relayer, metrics, limits)
    app = create_app(service, state_dir / "service" / "export")
    relayer.start()
    info = info_path(state_dir)
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps({"pid": os.getpid(), "url": f"http://{config.host}:{config.port}", **asdict(config)}))
    try:
        uvicorn.run(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            loop="uvloop",
            http="httptools",
            access_log=False,
        )
    finally:
        relayer.stop()


def read_info(state_dir: Path) -> dict[str, Any] | None:
    path = info_path(state_dir)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return None
    return info


def wait_ready(
    url: str, timeout: float = 60, process: subprocess.Popen[bytes] | None = None, ledger: str | None = None
) -> bool:
    """True once `url`/healthz answers (for `ledger`, if given); False after `timeout` or as soon as
    `process` has exited.

    With `ledger`, an answer from a service of another ledger does not count: another service that
    took the port between the check that it was free and our bind would otherwise pass for ours."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            answer = requests.get(url + "/healthz", timeout=2)
        except requests.RequestException:
            time.sleep(0.1)
            continue
        if ledger is None:
            return True
        try:
            served = answer.json().get("ledger")
        except ValueError:
            served = None
        if isinstance(served, str) and served.lower() == ledger.lower():
            return True
        time.sleep(0.1)  # not ours: ours either binds elsewhere never, and exits, or is still starting
    return False


def detach(
    args: list[str], state_dir: Path, url: str, env: dict[str, str] | None = None, ledger: str | None = None
) -> int:
    """Start `medmeter serve ARGS` in the background (with `env`, else this process's environment),
    logging to .medmeter/service/service.log; ready when /healthz answers (naming `ledger`, if given)."""
    log = state_dir / "service" / "service.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        start = handle.tell()  # the log is kept across runs: a failure quotes this run's lines only
        process = subprocess.Popen(
            [sys.executable, "-c", "from medmeter.cli import main; main()", *args],
            stdout=handle,
            stderr=handle,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    if not wait_ready(url, process=process, ledger=ledger):
        if process.poll() is None:
            process.kill()
            raise ServiceError(f"the service did not answer on {url} within 60 s: see {log}.")
        with log.open("rb") as handle:
            handle.seek(start)
            last = handle.read().decode(errors="replace").strip().splitlines()[-1:] or ["(nothing logged)"]
        raise ServiceError(f"the service stopped at start ({last[0]}): see {log}.")
    return process.pid


def stop(state_dir: Path) -> int | None:
    info = read_info(state_dir)
    if info is None:
        return None
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    info_path(state_dir).unlink(missing_ok=True)
    return pid
