"""`medmeter serve` (the platform service) and the institution side's `submit` and `status`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from medmeter.cli.context import session_of
from medmeter.client import DEFAULT_RETRIES
from medmeter.contract.facts import MAX_BATCH_SIZE


@click.group(invoke_without_command=True)
@click.option("--host", help="Address to bind (default 127.0.0.1) [env MEDMETER_SERVICE_HOST].")
@click.option("--port", type=int, help="Port (default 8700) [env MEDMETER_SERVICE_PORT].")
@click.option("--outbox", help="SQLite outbox file (default .medmeter/service/outbox.sqlite3).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    help=f"Interactions per transaction (default 100; the contract takes at most {MAX_BATCH_SIZE}).",
)
@click.option("--confirmations", type=click.IntRange(0), help="Blocks on top before an item counts as recorded.")
@click.option("--queue-cap", type=click.IntRange(1), help="Waiting items per institution before 429 (default 50000).")
@click.option("--detach", is_flag=True, help="Run in the background; stop with `medmeter serve stop`.")
@click.pass_context
def serve(ctx: click.Context, detach: bool, **flags: object) -> None:
    """The platform service: hospital systems POST signed interactions, it stores each durably,
    relays them continuously and answers what became of each. Settings: flags, then
    MEDMETER_SERVICE_* variables, then the [service] table of medmeter.toml."""
    if ctx.invoked_subcommand is not None:
        return
    from medmeter.service import server

    session = session_of(ctx)
    config = server.ServiceConfig.load(session.workspace.root, flags)
    url = f"http://{config.host}:{config.port}"
    if detach:
        running = server.read_info(session.workspace.state_dir)
        if running:
            click.echo(f"reusing the service (pid {running['pid']})")
            click.echo(running["url"])
            return
        _refuse_taken_port(config.host, config.port)
        args = [a for a in sys.argv[1:] if a != "--detach"]
        pid = server.detach(args, session.workspace.state_dir, url)
        click.echo(f"started the service (pid {pid}), log in .medmeter/service/service.log")
        click.echo(url)
        return
    _refuse_taken_port(config.host, config.port)
    ledger = session.ledger()  # fail here, in one sentence, if the node, deployment or operator is missing
    sender = session.operator().address
    if not ledger.call(ledger.contract.functions.hasRole(ledger.role_id("relayer"), sender)):
        # Otherwise every item would be acknowledged, then refused on chain: the clinics' clients drop
        # what the service answered for, so the refusal must come before the first answer.
        from medmeter.errors import ServiceError

        raise ServiceError(
            f"the key {session.operator_name!r} ({sender}) does not hold the relayer role on {ledger.address}: start "
            "the service with --operator and the keystore that does (`medmeter roles list` shows who; after "
            "`make demo` it is `relayer`)."
        )
    click.echo(f"medmeter service on {url} (docs {url}/docs)", err=True)
    server.run(session, config)


def _refuse_taken_port(host: str, port: int) -> None:
    """One sentence if another program listens on host:port; without it `--detach` took that program's
    answer on /healthz for the service's and said "started" while the service failed to bind."""
    import errno
    import socket

    from medmeter.errors import ServiceError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):  # SO_REUSEADDR, as uvicorn binds
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(
                f"{host}:{port} is already in use by another program: stop it, or give the service another port "
                "(--port, $MEDMETER_SERVICE_PORT or [service] port in medmeter.toml)."
            ) from None


@serve.command("stop")
@click.pass_context
def serve_stop(ctx: click.Context) -> None:
    """Stop the detached service (it finishes the transaction in hand; the outbox keeps the rest)."""
    from medmeter.service import server

    pid = server.stop(session_of(ctx).workspace.state_dir)
    click.echo(f"stopped the service (pid {pid})" if pid else "the service was not running")


@serve.command("status")
@click.pass_context
def serve_status(ctx: click.Context) -> None:
    """Say whether the service runs and its health. Exit 1 if it does not run or is degraded."""
    from medmeter.client import Client
    from medmeter.errors import ServiceError
    from medmeter.service import server

    info = server.read_info(session_of(ctx).workspace.state_dir)
    if info is None:
        click.echo("the service is not running: start it with `medmeter serve --detach`")
        ctx.exit(1)
    try:
        health = Client(info["url"]).health()
    except ServiceError:  # nothing answers there, or not the service
        raise ServiceError(
            f"the service (pid {info['pid']}) runs but does not answer on {info['url']}: it may still be starting; "
            "see .medmeter/service/service.log, or end it with `medmeter serve stop`."
        ) from None
    click.echo(f"running: pid {info['pid']}, {health['status']}, outbox depth {health['outbox_depth']}")
    click.echo(info["url"])
    if health["status"] != "ok":
        ctx.exit(1)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--gateway", required=True, envvar="MEDMETER_GATEWAY", help="The platform service's URL.")
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".medmeter/submit-outbox.jsonl"),
    show_default=True,
    help="Local file that keeps what the gateway has not answered for yet.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the gateway's answer to one request (a hung gateway counts as unreachable).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=DEFAULT_RETRIES,
    show_default=True,
    help="Attempts after the first, waiting 0.5 s, 1 s, 2 s … between them (or the gateway's Retry-After).",
)
def submit(files: tuple[Path, ...], gateway: str, outbox: Path, timeout: float, retries: int) -> None:
    """Post signed interactions from FILES to the platform (institution side), with retries; what
    cannot be delivered stays in --outbox and is sent by the next `submit` (with or without FILES).
    Exits 3 if any was refused.

    \b
    Example:
      medmeter submit --gateway http://127.0.0.1:8700 signed.jsonl
      medmeter submit --gateway http://127.0.0.1:8700        # send what the outbox still holds"""
    from medmeter.client import Client
    from medmeter.signing.interaction import read_signed

    items = [item for path in files for item in read_signed(path)]
    answers = Client(gateway, outbox, retries=retries, timeout=timeout).submit(items)
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer["status"]] = counts.get(answer["status"], 0) + 1
        if answer["status"] in ("refused", "conflict"):
            click.echo(f"{answer['id']} {answer['status']}: {answer.get('error')}: {answer.get('reason')}", err=True)
    click.echo(", ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "nothing to send")
    if counts.get("refused") or counts.get("conflict"):
        sys.exit(3)


@click.command("status")
@click.argument("item_id")
@click.option("--gateway", required=True, envvar="MEDMETER_GATEWAY", help="The platform service's URL.")
def status(item_id: str, gateway: str) -> None:
    """What became of interaction ITEM_ID (its EIP-712 digest): queued, sent, recorded, refused, expired."""
    from medmeter.client import Client

    click.echo(json.dumps(Client(gateway).status(item_id), indent=2))
