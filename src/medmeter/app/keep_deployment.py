"""Never lose a deployment file: before a new ledger replaces `deployments/<chain-id>.json`, the
old file is kept beside it as `deployments/<chain-id>-<address>.json` (its ledger still lives on
the chain, and `--deployment` can point at the kept file)."""

from __future__ import annotations

import json
from pathlib import Path

from medmeter.chain.deployment import deployment_path
from medmeter.fileio import write_atomic
from medmeter.workspace import Workspace


def current_deployment(workspace: Workspace, chain_id: int) -> dict[str, object] | None:
    """The recorded deployment for `chain_id`, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(deployment_path(workspace, chain_id).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and "address" in data else None


def remember(workspace: Workspace, chain_id: int) -> tuple[Path, bytes] | None:
    """Read the current deployment file before a deployment replaces it (None if there is none)."""
    current = current_deployment(workspace, chain_id)
    if current is None:
        return None
    source = deployment_path(workspace, chain_id)
    return source.with_name(f"{chain_id}-{current['address']}.json"), source.read_bytes()


def keep_aside(remembered: tuple[Path, bytes] | None) -> Path | None:
    """Write the remembered file under its kept name; called only once the new deployment succeeded,
    so a failed deploy creates nothing."""
    if remembered is None:
        return None
    path, data = remembered
    write_atomic(path, data)
    return path
