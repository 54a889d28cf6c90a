"""What a node serves in eth_getLogs is checked before it is settled on, and the export's own files
are checked before they are read again: each lie and each edit below must stop the export or the report."""

from __future__ import annotations

import pytest

from medmeter.chain.ledger import Ledger
from medmeter.chain.rpc import connect
from medmeter.errors import DecodeError, ExportStateError
from medmeter.export.checkpoint import PARTS_DIR, read_checkpoint
from medmeter.export.exporter import Exporter
from medmeter.export.reading import read_export
from tests.support.lying_node import lying_node, on_get_logs
from tests.support.reports import record_traffic

OTHER_CONTRACT = "0x" + "5e" * 20


@pytest.fixture
def traffic_env(env):
    record_traffic(env, 30, seed=3, batch=5)
    env.ledger.close_period()
    return env


def _duplicate_first(logs):
    return [logs[0], *logs]


def _from_another_contract(logs):
    logs[-1]["address"] = OTHER_CONTRACT
    return logs


def _marked_removed(logs):
    logs[0]["removed"] = True
    return logs


def _outside_the_range(logs):
    logs[0]["blockNumber"] = hex(10**9)
    return logs


def _invented_copy_in_another_contract(logs):
    invented = dict(logs[0], address=OTHER_CONTRACT, logIndex=hex(999))
    return [*logs, invented]


@pytest.mark.parametrize(
    ("lie", "says"),
    [
        (_duplicate_first, "was returned twice"),
        (_from_another_contract, "not the ledger"),
        (_marked_removed, "marked removed"),
        (_outside_the_range, "outside the requested blocks"),
        (_invented_copy_in_another_contract, "not the ledger"),
    ],
)
def test_a_node_that_lies_in_get_logs_stops_the_export(traffic_env, tmp_path, lie, says):
    upstream = traffic_env.w3.provider.endpoint_uri
    with lying_node(upstream, on_get_logs(lie)) as url:
        ledger = Ledger(connect(url), traffic_env.ledger.deployment)
        with pytest.raises(DecodeError, match=says) as caught:
            Exporter(ledger, tmp_path / "export").run()
    assert "point --rpc-url at a node you trust" in str(caught.value)
    # nothing the lie touched was written as exported
    assert not (tmp_path / "export" / "checkpoint.json").exists() or read_checkpoint(tmp_path / "export").rows == 0


def test_an_honest_proxy_exports_the_same_rows(traffic_env, tmp_path):
    """The proxy itself changes nothing: without a lie the export equals the direct one."""
    with lying_node(traffic_env.w3.provider.endpoint_uri, lambda _m, _p, result: result) as url:
        Exporter(Ledger(connect(url), traffic_env.ledger.deployment), tmp_path / "proxied").run()
    Exporter(traffic_env.ledger, tmp_path / "direct").run()
    assert read_export(tmp_path / "proxied").equals(read_export(tmp_path / "direct"))


@pytest.mark.parametrize("edit", ["flip-a-byte", "truncate", "swap-with-another-part"])
def test_an_edited_parquet_part_is_refused_when_read_again(traffic_env, tmp_path, edit):
    out = tmp_path / "export"
    Exporter(traffic_env.ledger, out, chunk_blocks=3).run()
    parts = read_checkpoint(out).parts
    assert len(parts) >= 2
    target = out / PARTS_DIR / parts[0].file
    data = target.read_bytes()
    if edit == "flip-a-byte":
        middle = len(data) // 2
        target.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    elif edit == "truncate":
        target.write_bytes(data[:-10])
    else:
        target.write_bytes((out / PARTS_DIR / parts[1].file).read_bytes())
    with pytest.raises(ExportStateError, match="changed since it was exported") as caught:
        read_export(out)
    assert "medmeter export --restart" in str(caught.value)
