"""Prometheus metrics of the service, in a registry of its own (so tests can build several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from medmeter.contract.facts import MAX_BATCH_SIZE


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("medmeter_interactions_accepted", "Interactions stored as queued.", registry=r)
        self.duplicates = Counter("medmeter_interactions_duplicate", "Posted again (same digest).", registry=r)
        self.refused = Counter(
            "medmeter_interactions_refused", "Interactions refused, by reason.", ["reason"], registry=r
        )
        self.recorded = Counter("medmeter_interactions_recorded", "Interactions recorded on chain.", registry=r)
        self.batch_size = Histogram(
            "medmeter_batch_size",
            "Interactions per relayed transaction.",
            buckets=(1, 10, 50, 100, MAX_BATCH_SIZE),
            registry=r,
        )
        self.gas_per_interaction = Gauge(
            "medmeter_gas_per_interaction", "Gas per interaction of the last relayed chunk.", registry=r
        )
        self.outbox_depth = Gauge("medmeter_outbox_depth", "Interactions queued or sent, not yet final.", registry=r)
        self.oldest_queued_age = Gauge(
            "medmeter_oldest_queued_age_seconds", "Age of the oldest interaction not yet final.", registry=r
        )
        self.post_to_ack = Histogram(
            "medmeter_post_seconds",
            "Time to answer a POST /v1/interactions.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.post_to_recorded = Histogram(
            "medmeter_accepted_to_recorded_seconds",
            "From acknowledgement to recorded on chain.",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
