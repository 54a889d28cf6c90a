"""What a node serves in eth_getLogs is checked before it is settled on, and the export's own files
are checked before they are read again: each lie and each edit below must stop the export or the report."""

from __future__ import annotations

import pytest

from medmeter.chain.ledger import Ledger
from medmeter.chain.rpc import connect
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC
from medmeter.errors import DecodeError, ExportStateError, ReconciliationError
from medmeter.export.checkpoint import PARTS_DIR, read_checkpoint
from medmeter.export.exporter import Exporter
from medmeter.export.reading import read_export
from medmeter.settlement.period import settle_period
from medmeter.signing.interaction import Kind
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


def _set_word(log: dict, index: int, value: int) -> None:
    data = log["data"][2:]
    log["data"] = "0x" + data[: 64 * index] + f"{value:064x}" + data[64 * (index + 1) :]


def _word(log: dict, index: int) -> int:
    return int(log["data"][2 + 64 * index : 2 + 64 * (index + 1)], 16)


KIND, CATEGORY, RECORDS = 0, 1, 2


def _first_sync(logs):
    """The first sync's log in an answer, or None (tariff or registry logs only)."""
    return next((log for log in logs if log["topics"][0] == INTERACTION_RECORDED_TOPIC and _word(log, KIND) == 0), None)


def _records_doubled(_rates):
    def lie(logs):
        if (log := _first_sync(logs)) is not None:
            _set_word(log, RECORDS, 2 * _word(log, RECORDS))
        return logs

    return lie


def _category_changed(rates):
    def lie(logs):
        if (log := _first_sync(logs)) is not None:
            other = next(c for c, rate in rates.items() if rate != rates[_word(log, CATEGORY)])
            _set_word(log, CATEGORY, other)
        return logs

    return lie


@pytest.mark.parametrize("make_lie", [_records_doubled, _category_changed])
def test_a_row_whose_price_the_tariff_does_not_give_fails_the_settlement(traffic_env, tmp_path, make_lie):
    """Units, counts and every net stay as the chain has them; only a row's records or category lie."""
    functions, call = traffic_env.ledger.contract.functions, traffic_env.ledger.call
    rates = {c: int(sync) for c in range(64) for sync, _, defined in [call(functions.rateOf(c))] if defined}
    with lying_node(traffic_env.w3.provider.endpoint_uri, on_get_logs(make_lie(rates))) as url:
        ledger = Ledger(connect(url), traffic_env.ledger.deployment)
        Exporter(ledger, tmp_path / "export").run()
        dataset = read_export(tmp_path / "export").to_pandas()
        with pytest.raises(ReconciliationError, match="not priced as the chain's tariff prices them"):
            settle_period(ledger, dataset, 1)


def test_a_tariff_change_inside_the_period_prices_each_row_by_the_tariff_then(env, tmp_path):
    """Honest rows on both sides of a mid-period change settle; a lie after the change is still caught."""
    a, b, _ = env.institutions
    env.record(env.signed(Kind.SYNC, a, category=2, records=4), env.signed(Kind.FETCH, b, category=2, records=1))
    env.ledger.set_rate(2, 7, 9, "laboratory")
    env.ledger.set_platform_fee(1_000)
    env.record(
        env.signed(Kind.SYNC, a, category=2, records=3),
        env.signed(Kind.EXCHANGE, b, counterparty=a.address, category=2, records=2),
    )
    env.ledger.close_period()
    Exporter(env.ledger, tmp_path / "honest").run()
    honest = settle_period(env.ledger, read_export(tmp_path / "honest").to_pandas(), 1)
    assert honest.interactions["units"].tolist()[-2:] == [3 * 7, 2 * 9]

    def last_sync_records_plus_one(logs):
        syncs = [log for log in logs if log["topics"][0] == INTERACTION_RECORDED_TOPIC and _word(log, KIND) == 0]
        if syncs:
            _set_word(syncs[-1], RECORDS, _word(syncs[-1], RECORDS) + 1)
        return logs

    with lying_node(env.w3.provider.endpoint_uri, on_get_logs(last_sync_records_plus_one)) as url:
        ledger = Ledger(connect(url), env.ledger.deployment)
        Exporter(ledger, tmp_path / "lied").run()
        with pytest.raises(ReconciliationError, match=r"4 records\) has units 21 and fee 0, the tariff gives 28 and 0"):
            settle_period(ledger, read_export(tmp_path / "lied").to_pandas(), 1)


UNITS, FEE = 3, 4


def _exchange_as_fetch_plus_invented_sync(logs):
    """Every institution's net stays the chain's: the consumer still pays `units`, the provider still
    gets `units - fee`; only kinds, counts and fee move (the lie issue 10 describes)."""
    exchanges = [log for log in logs if log["topics"][0] == INTERACTION_RECORDED_TOPIC and _word(log, KIND) == 2]
    if not exchanges:
        return logs
    log = exchanges[0]
    provider_topic = log["topics"][2]
    units, fee = _word(log, UNITS), _word(log, FEE)
    invented = dict(log, topics=[log["topics"][0], provider_topic, "0x" + "00" * 32])
    invented["logIndex"] = hex(int(log["logIndex"], 16) + 1000)
    _set_word(invented, KIND, 0)
    _set_word(invented, UNITS, units - fee)
    _set_word(invented, FEE, 0)
    log["topics"] = [log["topics"][0], log["topics"][1], "0x" + "00" * 32]
    _set_word(log, KIND, 1)
    _set_word(log, FEE, 0)
    return [*logs, invented]


def test_a_lie_that_keeps_every_net_fails_on_the_counters(traffic_env, tmp_path):
    with lying_node(traffic_env.w3.provider.endpoint_uri, on_get_logs(_exchange_as_fetch_plus_invented_sync)) as url:
        ledger = Ledger(connect(url), traffic_env.ledger.deployment)
        Exporter(ledger, tmp_path / "export").run()
        dataset = read_export(tmp_path / "export").to_pandas()
        with pytest.raises(ReconciliationError, match="counters") as caught:
            settle_period(ledger, dataset, 1)
    message = str(caught.value)
    assert "fee_units" in message and "exchange_in_count" in message and "events" in message and "chain" in message
