"""Errors a user can act on: each says what is wrong and what to do."""

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
