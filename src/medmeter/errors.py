"""Every exception medmeter raises, in one tree.

`MedmeterError` and its subclasses are errors a user can act on: `str(error)` says what is wrong
and what to do, and `medmeter`'s `main()` prints it as one line. `InternalSignal` subclasses are
not user errors: code inside medmeter raises and catches them, and none reaches `main()`.
"""

from __future__ import annotations


class MedmeterError(Exception):
    """Base class: `str(error)` is a sentence for the user, ending with what to do."""


class ToolchainError(MedmeterError):
    """node, solcjs or anvil are missing or broken."""


class CompilationError(MedmeterError):
    """The Solidity sources did not compile."""


class RpcUnavailableError(MedmeterError):
    """The JSON-RPC endpoint cannot be reached or keeps failing."""


class DeploymentError(MedmeterError):
    """No deployment, or the address does not hold the ledger."""


class WalletError(MedmeterError):
    """A keystore is missing, malformed or the password is wrong."""


class InputError(MedmeterError):
    """A file given by the user is malformed: names the file, line and field."""


class LedgerRevertError(MedmeterError):
    """The contract refused a call; carries the decoded custom error."""

    def __init__(self, error_name: str, args: dict[str, object], message: str) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = args


class ReconciliationError(MedmeterError):
    """Events and contract state disagree."""


class ExportStateError(MedmeterError):
    """The export folder's checkpoint is unreadable or belongs to another ledger."""


class DecodeError(MedmeterError):
    """A log does not have the shape of the ledger's events."""


class StatementError(MedmeterError):
    """A statement cannot be produced, read or verified."""


class InternalSignal(Exception):
    """Raised and caught inside medmeter to change course; never shown to a user."""


class ChainMovedError(InternalSignal):
    """The chain changed while a chunk was being read (a reorg in flight)."""


class EvmVersionError(MedmeterError):
    """An EVM version medmeter cannot compile for was asked for."""


class FundingError(MedmeterError):
    """An account cannot be given ether on this node: the sentence says how to fund it."""


class ContractExecutionError(MedmeterError):
    """The node ran the ledger's code and it failed (a revert, an invalid opcode): not a node outage."""


class HistoricalStateError(MedmeterError):
    """The node no longer keeps the state of a past block a command reads (a pruned, non-archive node)."""


class TransactionStuckError(MedmeterError):
    """A transaction was not mined despite rebroadcasts and fee-bumped replacements."""


class ReorgedError(InternalSignal):
    """A mined transaction's block left the chain before its confirmations; its items go back to the queue."""


class ServiceError(MedmeterError):
    """The platform service cannot start, or a gateway answered with an error."""


class GatewayUnavailableError(ServiceError):
    """The platform service's gateway cannot be reached (the client keeps the items to send later)."""
