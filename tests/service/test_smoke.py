from medmeter.service.server import wait_ready
from medmeter.signing.interaction import Kind
from tests.service.conftest import ServiceEnv


def test_one_item_is_queued_then_recorded(service_env: ServiceEnv) -> None:
    clinic = service_env.env.institutions[0]
    item = service_env.signed(Kind.SYNC, clinic)
    answer = service_env.server.post([item])
    assert answer.status_code == 202, answer.text
    [entry] = answer.json()["items"]
    assert entry["status"] == "queued"
    final = service_env.server.wait_final([entry["id"]])[entry["id"]]
    assert final["status"] == "recorded", final


def test_readiness_counts_only_the_service_of_the_ledger_asked_for(service_env: ServiceEnv) -> None:
    """A detached start is ready when /healthz answers for its own ledger: a service of another ledger on
    the port (one that won the port between the free-port check and the bind) must not pass for it."""
    url, ledger = service_env.server.url, service_env.env.ledger.address
    assert wait_ready(url, timeout=10, ledger=ledger.lower())
    assert not wait_ready(url, timeout=1.5, ledger="0x" + "12" * 20)
    assert wait_ready(url, timeout=10)  # no ledger named: any answer counts, as `serve --detach` asks
