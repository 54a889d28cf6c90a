"""`brownie run scripts/demo.py`: the medmeter main job on brownie's network (its own anvil).

Keystore passwords come from MEDMETER_KEYSTORE_PASSWORD (required: brownie scripts are not
interactive). Everything it writes goes to the brownie corner of the workspace (deployments/brownie/,
.medmeter/brownie/, reports/brownie/), never over the medmeter devnet's ledger or reports."""

from contextlib import contextmanager

from scripts._workspace import brownie_workspace

from brownie import web3  # type: ignore[attr-defined]
from medmeter.app.demo import run_demo
from medmeter.app.session import Session


@contextmanager
def _no_progress(total, label):
    yield lambda n: None


def main(count: int = 300) -> None:
    session = Session(brownie_workspace(), rpc_url_option=web3.provider.endpoint_uri)
    run_demo(session, count=int(count), seed=7, batch_size=100, echo=print, progress=_no_progress)
