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
