"""The brownie scripts' own corner of the workspace.

brownie runs on its own throwaway network (an anvil on port 8545 that it stops afterwards), so
nothing it deploys may take the place of the medmeter workspace's ledger: its deployment files go
to `deployments/brownie/`, its keystores, nonce book and reports to `.medmeter/brownie/` and
`reports/brownie/`. The compiled artifact is shared (same sources, same bytes).
"""

from dataclasses import dataclass
from pathlib import Path

from medmeter.workspace import Workspace

BROWNIE_DIR = "brownie"


@dataclass(frozen=True)
class BrownieWorkspace(Workspace):
    @property
    def state_dir(self) -> Path:
        return self.root / ".medmeter" / BROWNIE_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.root / ".medmeter" / "artifacts"

    @property
    def deployments_dir(self) -> Path:
        return self.root / "deployments" / BROWNIE_DIR

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports" / BROWNIE_DIR


def brownie_workspace() -> BrownieWorkspace:
    return BrownieWorkspace(Workspace.locate().root)
