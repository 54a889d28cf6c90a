"""Pipeline tests (export, settlement, statements) get the `cli_workspace` fixture: a medmeter
workspace pointed at the session ledger."""

from tests.support.report_fixtures import cli_workspace  # noqa: F401
