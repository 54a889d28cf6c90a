"""Issue 13: what a new user meets. Help that teaches, refusals that fit the mistake, no traceback
for any input, nothing lost by a failed command, nonces safe across processes, plain progress in logs.

Each test names the catalogue line of docs/bad-input.md it proves ("A newcomer's mistakes")."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from medmeter.cli import cli as cli_root
from tests.support.cli import (
    REPO_ROOT,
    CliWorkspace,
    assert_clean_error,
    craft,
    deployed_workspace,
    read_items,
    register,
    snapshot,
    write_items,
)

CHAIN_ID = 31337
BUNDLE = REPO_ROOT / "samples" / "bundle.json"
ENV_VARIABLES = (
    "MEDMETER_RPC_URL",
    "MEDMETER_HOME",
    "MEDMETER_RPC_TIMEOUT",
    "MEDMETER_SCRYPT_N",
    "MEDMETER_KEYSTORE_PASSWORD",
    "MEDMETER_ALLOW_EMPTY_PASSWORD",
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path_factory.mktemp("newcomer") / "ws", [("clinic-a", "NEW-A", 1_000), ("clinic-b", "NEW-B", 1_000)]
    )
    yield cli
    cli.close()


def nonce_book(ws: CliWorkspace) -> Path:
    return ws.state_dir / "nonces.json"


def sign_args(out: Path, *extra: object) -> tuple[object, ...]:
    return ("sign", BUNDLE, "--wallet", "clinic-a", "--kind", "sync", "-o", out, *extra)


# ---------------------------------------------------------------------------------- help (no chain)


def all_commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from all_commands(sub, (*path, name))
    yield " ".join(path) or "medmeter", command


def test_every_command_has_an_example_and_every_option_a_description() -> None:
    for name, command in all_commands(cli_root):
        with click.Context(command, info_name=name) as ctx:
            text = command.get_help(ctx)
        assert "Example" in text, f"`{name} --help` has no example"
        undescribed = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert not undescribed, f"`{name}` options without a description: {undescribed}"


def test_the_root_help_names_every_environment_variable_and_the_readme_table_too() -> None:
    with click.Context(cli_root, info_name="medmeter") as ctx:
        text = cli_root.get_help(ctx)
    configuration = (REPO_ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for variable in ENV_VARIABLES:
        assert variable in text, f"{variable} missing from `medmeter --help`"
        assert variable in configuration, f"{variable} missing from the README's configuration table"


def test_report_help_says_period_or_all_is_required() -> None:
    command = cli_root.commands["report"]
    with click.Context(command, info_name="report") as ctx:
        text = " ".join(command.get_help(ctx).split())
    assert "this or --all is required" in text and "this or --period is required" in text


# ---------------------------------------------------------------------------------- options anywhere


def test_global_options_work_after_the_command(ws: CliWorkspace) -> None:
    url = ws.rpc_url()
    after = ws.run("balances", "--rpc-url", url, "--operator", "operator")
    assert "NEW-A" in after.stdout
    wrong = ws.run("balances", "--rpc-url", "http://127.0.0.1:9", expect=1, env={"MEDMETER_RPC_TIMEOUT": "0.2"})
    assert_clean_error(wrong, "http://127.0.0.1:9")  # the option after the command was used, not the devnet


# ---------------------------------------------------------------------------------- outputs that cannot be written


@pytest.mark.parametrize(
    "command",
    [
        ("sign", BUNDLE, "--wallet", "clinic-a", "--kind", "sync", "-o", "{blocked}/out.jsonl"),
        ("simulate", "--count", 5, "-o", "{blocked}/traffic.jsonl"),
        ("export", "--out", "{blocked}/export"),
        ("report", "--all", "--out-dir", "{blocked}/reports"),
        ("statement", "--institution", "NEW-A", "--period", 1, "-o", "{blocked}/statement.json"),
    ],
    ids=["sign-o", "simulate-o", "export-out", "report-out-dir", "statement-o"],
)
def test_an_output_folder_that_cannot_be_created(ws: CliWorkspace, tmp_path: Path, command: tuple) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where a folder should be\n")
    if command[0] in ("report", "statement") and ws.run("period", "list").lines[0].endswith("(open)"):
        ws.run("period", "close")
    if command[0] == "statement":
        ws.run("anchor", "--period", 1)  # a statement needs the anchored root; anchoring again is a no-op
    before = snapshot([nonce_book(ws), ws.root / "deployments" / f"{CHAIN_ID}.json"])
    args = [str(a).format(blocked=blocked) for a in command]
    result = ws.run(*args, expect=1)
    assert_clean_error(result, str(blocked))
    assert snapshot(before) == before  # the nonce book is unchanged: a failed sign/simulate consumed nothing


# ---------------------------------------------------------------------------------- hostile bytes


HOSTILE = {
    "nested-200000-deep": b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "integer-of-5000-digits": b'{"kind": "sync", "nonce": ' + b"9" * 5000 + b"}\n",
    "not-utf-8": b'{"kind": "sync\xff\xfe"}\n',
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["relay", "sign", "verify-statement"])
def test_hostile_files_give_one_sentence(ws: CliWorkspace, tmp_path: Path, command: str, case: str) -> None:
    path = tmp_path / f"{case}.json"
    path.write_bytes(HOSTILE[case])
    out = tmp_path / "out.jsonl"
    before = snapshot([nonce_book(ws)])
    args = {"relay": ("relay", path), "sign": ("sign", path, *sign_args(out)[2:])}.get(
        command, ("verify-statement", path)
    )
    assert_clean_error(ws.run(*args, expect=1), str(path))
    assert not out.exists() and snapshot(before) == before


# ---------------------------------------------------------------------------------- nonces


def test_a_failed_sign_leaves_the_nonce_book_and_the_output_unchanged(ws: CliWorkspace, tmp_path: Path) -> None:
    out = tmp_path / "outbox.jsonl"
    ws.run(*sign_args(out))
    before = snapshot([out, nonce_book(ws)])
    # Fails after the nonce would have been reserved: the counterparty is resolved only then.
    result = ws.run(*sign_args(out)[:5], "exchange", "--counterparty", "NEW-Z", "-o", out, expect=1)
    assert_clean_error(result, "'NEW-Z' is not an address", "NEW-A")
    assert snapshot(before) == before


def test_concurrent_sign_processes_never_share_a_nonce(ws: CliWorkspace, tmp_path: Path) -> None:
    """Eight real `medmeter sign` processes at once for one institution (issue 10 §5: a file lock)."""
    institution = ws.account("clinic-a").address
    start = json.loads(nonce_book(ws).read_text()).get(institution, 0) if nonce_book(ws).is_file() else 0
    outs = [tmp_path / f"out-{i}.jsonl" for i in range(8)]
    processes = [ws.popen(*sign_args(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for out in outs]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr.decode()
    nonces = sorted(item["nonce"] for out in outs for item in read_items(out))
    assert nonces == list(range(start, start + 8))  # distinct and none skipped
    assert json.loads(nonce_book(ws).read_text())[institution] == start + 8
    relayed = ws.run("relay", *outs)
    assert "recorded 8," in relayed.stdout


# ---------------------------------------------------------------------------------- names


def test_a_mistyped_wallet_or_operator_lists_the_names_that_exist(ws: CliWorkspace, tmp_path: Path) -> None:
    keystores = sorted(p.name for p in (ws.state_dir / "keystores").iterdir())
    out = tmp_path / "out.jsonl"
    line = assert_clean_error(ws.run("sign", BUNDLE, "--wallet", "clinc-a", "--kind", "sync", "-o", out, expect=1))
    assert "did you mean clinic-a" in line and "clinic-b" in line
    line = assert_clean_error(ws.run("tariff", "fee", 100, "--operator", "operatr", expect=1))
    assert "did you mean operator" in line and "a new key would hold none of its roles" in line
    assert "wallet new" not in line  # a fresh operator key would be useless: it is not suggested
    assert sorted(p.name for p in (ws.state_dir / "keystores").iterdir()) == keystores
    assert not out.exists()


def test_wallet_names_are_matched_whole(ws: CliWorkspace) -> None:
    assert_clean_error(ws.run("wallet", "new", "clinic-c\n", expect=1), "is not allowed")
    assert not (ws.state_dir / "keystores" / "clinic-c.json").exists()


def test_an_empty_password_is_refused_unless_allowed(ws: CliWorkspace) -> None:
    empty = {"MEDMETER_KEYSTORE_PASSWORD": ""}
    line = assert_clean_error(ws.run("wallet", "new", "no-password", expect=1, env=empty), "is empty")
    assert "--allow-empty-password" in line
    assert not (ws.state_dir / "keystores" / "no-password.json").exists()
    ws.run("wallet", "new", "no-password", "--allow-empty-password", env=empty)
    assert (ws.state_dir / "keystores" / "no-password.json").is_file()


def test_a_failed_registration_shows_the_code_as_text(ws: CliWorkspace) -> None:
    result = register(ws, "clinic-dup", "NEW-A", "Dup", expect=1)
    assert_clean_error(result, "InstitutionCodeTaken", "code 'NEW-A' already belongs to")
    assert "0x4e45572d41" not in result.stderr.lower()  # not as bytes32 hex
    assert "clinic-dup" not in ws.run("institution", "list").stdout


def test_counterparty_takes_an_institution_code(ws: CliWorkspace, tmp_path: Path) -> None:
    out = tmp_path / "exchange.jsonl"
    ws.run(*sign_args(out)[:3], "clinic-b", "--kind", "exchange", "--counterparty", "NEW-A", "-o", out)
    [item] = read_items(out)
    assert item["counterparty"] == ws.account("clinic-a").address


# ---------------------------------------------------------------------------------- deploy, report, periods


def test_deploy_keeps_a_live_ledger_and_new_keeps_the_old_file(ws: CliWorkspace) -> None:
    before = ws.deployment()
    kept = ws.run("deploy")
    assert "already deployed at " + before["address"] in kept.stdout and ws.deployment() == before
    # A wrong operator name creates nothing and replaces nothing, even with --new.
    assert_clean_error(ws.run("deploy", "--new", "--operator", "nobody", expect=1), "no operator keystore 'nobody'")
    assert ws.deployment() == before


def test_report_of_a_period_that_does_not_exist(ws: CliWorkspace) -> None:
    line = assert_clean_error(ws.run("report", "--period", 99, expect=1), "period 99 does not exist")
    assert "not closed" not in line
    usage = ws.run("report", expect=2)
    assert "give either --period P" in usage.stderr and "one of them is required" in usage.stderr


# ---------------------------------------------------------------------------------- refusals, progress


def test_many_refusals_are_summarised_by_reason_with_the_details_in_rejected(ws: CliWorkspace, tmp_path: Path) -> None:
    path = tmp_path / "foreign.jsonl"
    items = [craft(ws, "clinic-a", "sync", nonce=90_000 + i, chain_id=1) for i in range(14)]
    write_items(path, items)
    rejected = tmp_path / "refused.jsonl"
    result = ws.run("relay", path, "--rejected", rejected, expect=3)
    item_lines = [line for line in result.stderr.splitlines() if line.startswith("item ")]
    assert len(item_lines) == 10, result.describe()
    summary = [line for line in result.stderr.splitlines() if line.startswith("... and 4 more")]
    assert summary and " 14" in summary[0] and str(rejected) in summary[0], result.describe()
    assert read_items(rejected) == items
    assert "\r" not in result.stderr


def test_progress_in_a_log_is_plain_lines(ws: CliWorkspace, tmp_path: Path) -> None:
    out = tmp_path / "traffic.jsonl"
    result = ws.run("simulate", "--count", 60, "-o", out)
    assert "\r" not in result.stderr
    assert "sign: 60 item(s)..." in result.stderr and "sign: 60 of 60 done in" in result.stderr
    relayed = ws.run("relay", out)
    assert "\r" not in relayed.stderr and "relay: 60 of 60 done in" in relayed.stderr


# ---------------------------------------------------------------------------------- the compiler front end


def test_a_solc_shim_whose_checkout_is_gone_says_so(tmp_path: Path) -> None:
    from medmeter.toolchain.executables import install_solcx_shim
    from medmeter.workspace import Workspace

    checkout = tmp_path / "checkout"
    (checkout / "tools").mkdir(parents=True)
    (checkout / "tools" / "solc-standard-json.cjs").write_bytes(
        (REPO_ROOT / "tools" / "solc-standard-json.cjs").read_bytes()
    )
    (checkout / "node_modules").symlink_to(REPO_ROOT / "node_modules")
    shim = install_solcx_shim(Workspace(checkout), tmp_path / "bin")
    other = install_solcx_shim(Workspace(REPO_ROOT), tmp_path / "other-bin")
    (checkout / "tools" / "solc-standard-json.cjs").unlink()  # the checkout is deleted
    assert subprocess.run([shim, "--version"], capture_output=True, text=True).returncode == 0
    gone = subprocess.run([shim, "--standard-json"], input="{}", capture_output=True, text=True)
    assert gone.returncode == 1 and f"checkout {checkout}, which is gone" in gone.stderr
    # Another checkout's shim, in its own folder, is untouched and still compiles.
    alive = subprocess.run(
        [other, "--standard-json"], input='{"language": "Solidity", "sources": {}}', capture_output=True, text=True
    )
    assert "which is gone" not in alive.stderr and os.access(other, os.X_OK)
