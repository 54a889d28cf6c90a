"""Where a medmeter project keeps its files.

A workspace is the folder holding `package.json` (for node_modules), `contracts/`
and the state folder `.medmeter/`. Everything medmeter writes lives under it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medmeter.errors import ToolchainError

STATE_DIR_NAME = ".medmeter"
ROOT_ENV = "MEDMETER_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def locate(cls, start: Path | None = None) -> Workspace:
        """Find the project root: $MEDMETER_HOME, else the nearest folder upwards from
        `start` (default: cwd) with `contracts/MeteringLedger.sol`, else the source checkout."""
        if env_root := os.environ.get(ROOT_ENV):
            return cls(Path(env_root).resolve())
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "contracts" / "MeteringLedger.sol").is_file():
                return cls(folder)
        checkout = Path(__file__).resolve().parents[2]
        if (checkout / "contracts" / "MeteringLedger.sol").is_file():
            return cls(checkout)
        raise ToolchainError(
            f"no medmeter project found from {here}: run medmeter inside the project folder or set {ROOT_ENV} to it."
        )

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR_NAME

    @property
    def node_modules(self) -> Path:
        return self.root / "node_modules"

    @property
    def contracts_dir(self) -> Path:
        return self.root / "contracts"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def devnet_dir(self) -> Path:
        return self.state_dir / "devnet"

    @property
    def keystore_dir(self) -> Path:
        return self.state_dir / "keystores"

    @property
    def deployments_dir(self) -> Path:
        return self.root / "deployments"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"
