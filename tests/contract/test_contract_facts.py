"""The Python side's facts about the contract (medmeter.contract.facts, the revert advice, the CLI's
command names) checked against the compiled ABI and the deployed contract, so none can drift."""

from __future__ import annotations

import re

import click

from medmeter.cli import cli
from medmeter.contract import facts
from medmeter.contract.revert_advice import ADVICE
from medmeter.toolchain.compiler import Artifact


def _abi_signature(item: dict) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


def test_constants_equal_the_contracts(deployed_env):
    functions = deployed_env.ledger.contract.functions
    call = deployed_env.ledger.call
    assert call(functions.MAX_BATCH_SIZE()) == facts.MAX_BATCH_SIZE
    assert call(functions.MAX_RECORDS_PER_INTERACTION()) == facts.MAX_RECORDS_PER_INTERACTION
    assert call(functions.MAX_UNITS_PER_RECORD()) == facts.MAX_UNITS_PER_RECORD
    assert call(functions.BPS_DENOMINATOR()) == facts.BPS_DENOMINATOR
    assert call(functions.LEDGER_ID()) == facts.LEDGER_ID
    assert [call(functions.KIND_SYNC()), call(functions.KIND_FETCH()), call(functions.KIND_EXCHANGE())] == [
        kind.value for kind in facts.Kind
    ]
    for role in facts.OPERATING_ROLES:
        assert call(getattr(functions, role)()) == __import__("eth_utils").keccak(text=role)


def test_event_signatures_are_the_abis(artifact: Artifact):
    events = {_abi_signature(item) for item in artifact.abi if item["type"] == "event"}
    for signature in (
        facts.INTERACTION_RECORDED_SIGNATURE,
        facts.INSTITUTION_REGISTERED_SIGNATURE,
        facts.PERIOD_CLOSED_SIGNATURE,
        *facts.REGISTRY_EVENT_SIGNATURES,
    ):
        assert signature in events
    by_name = {item["name"]: item for item in artifact.abi if item["type"] == "event"}
    for signature in facts.REGISTRY_EVENT_SIGNATURES:
        first = by_name[signature.split("(")[0]]["inputs"][0]
        assert (first["name"], first["indexed"]) == ("institution", True), signature


def test_every_custom_error_has_advice_and_no_advice_is_stale(artifact: Artifact):
    errors = {item["name"] for item in artifact.abi if item["type"] == "error"}
    assert errors - ADVICE.keys() == set(), "errors without advice"
    assert ADVICE.keys() - errors == set(), "advice for errors the contract no longer has"


def _command_paths(group: click.Group, prefix: str = "medmeter") -> set[str]:
    paths = set()
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        paths.add(path)
        if isinstance(command, click.Group):
            paths |= _command_paths(command, path)
    return paths


def test_every_command_the_advice_names_exists():
    commands = _command_paths(cli)
    named = {m.group(1).strip() for text in ADVICE.values() for m in re.finditer(r"`(medmeter [a-z -]+?)`", text)}
    assert named, "the advice names commands; the pattern must find them"
    for command in named:
        words = command.split()
        # the longest prefix that is a command must be the whole phrase minus arguments
        assert " ".join(words[:3]) in commands or " ".join(words[:2]) in commands, command
