"""The institution side of the platform service: post signed interactions, ask what became of them.

Importable by a hospital information system's integration. Nothing signed is lost while the platform
is unreachable: `Client.submit` appends every item to a local outbox file (JSON lines) before posting,
and removes it only once the gateway answered for it (queued, duplicate, refused or conflict).
`Client.flush()` posts what is still there; a retry is harmless, since the service answers
`duplicate` for a digest it already holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from filelock import FileLock

from medmeter.errors import GatewayUnavailableError, ServiceError
from medmeter.signing.interaction import SignedInteraction, iter_json_lines

DEFAULT_RETRIES = 5
BACKOFF_SECONDS = 0.5
POST_CHUNK = 1000


@dataclass
class Client:
    gateway: str
    outbox: Path | None = None  # local JSON-lines file of items not yet answered for
    retries: int = DEFAULT_RETRIES
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.gateway = self.gateway.rstrip("/")
        self._session = requests.Session()

    # ------------------------------------------------------------------ posting

    def post(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST records (JSON objects) with retries on transport errors, 429 and 5xx; one answer each."""
        delay = BACKOFF_SECONDS
        last: str = ""
        for _attempt in range(self.retries + 1):
            try:
                response = self._session.post(f"{self.gateway}/v1/interactions", json=records, timeout=self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code == 202:
                    return self._answer(response, "/v1/interactions")["items"]
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    delay = max(delay, float(response.headers.get("Retry-After", delay)))
                else:
                    messages = self._errors(response, "/v1/interactions")
                    raise ServiceError(f"the gateway refused the request (HTTP {response.status_code}): {messages}")
            if _attempt < self.retries:  # no wait after the last attempt: nothing follows it
                time.sleep(delay)
                delay = min(delay * 2, 30)
        raise GatewayUnavailableError(
            f"the gateway {self.gateway} did not take the interactions after {self.retries + 1} attempts ({last}): "
            "they are kept in the local outbox; run `medmeter submit --gateway URL` again later."
        )

    def submit(self, items: Iterable[SignedInteraction]) -> list[dict[str, Any]]:
        """Keep `items` in the local outbox, then post everything the outbox holds."""
        lines = list(iter_json_lines(items))
        if self.outbox is None:
            answers = []
            for start in range(0, len(lines), POST_CHUNK):
                answers.extend(self.post([json.loads(line) for line in lines[start : start + POST_CHUNK]]))
            return answers
        with self._lock(), self.outbox.open("a") as handle:
            handle.writelines(lines)
            handle.flush()
        return self.flush()

    def flush(self) -> list[dict[str, Any]]:
        """Post what the local outbox holds; answered items leave it, the rest stay for the next flush."""
        assert self.outbox is not None
        answers: list[dict[str, Any]] = []
        with self._lock():
            if not self.outbox.is_file():
                return answers
            pending = [line for line in self.outbox.read_text().splitlines() if line.strip()]
            while pending:
                chunk = pending[:POST_CHUNK]
                answers.extend(self.post([json.loads(line) for line in chunk]))
                pending = pending[POST_CHUNK:]
                tmp = self.outbox.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in pending))
                tmp.replace(self.outbox)
        return answers

    def _lock(self) -> FileLock:
        assert self.outbox is not None
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.outbox) + ".lock")

    # ------------------------------------------------------------------ reading

    def status(self, item_id: str) -> dict[str, Any]:
        return self._get(f"/v1/interactions/{item_id}")

    def institution(self, address: str) -> dict[str, Any]:
        return self._get(f"/v1/institutions/{address}")

    def interactions(self, address: str, status: str | None = None) -> list[dict[str, Any]]:
        out, cursor = [], 0
        while True:
            params: dict[str, Any] = {"cursor": cursor, "limit": 1000}
            if status:
                params["status"] = status
            page = self._get(f"/v1/institutions/{address}/interactions", params)
            out.extend(page["items"])
            if page["next_cursor"] is None:
                return out
            cursor = page["next_cursor"]

    def health(self) -> dict[str, Any]:
        """The /healthz answer (200 ok or 503 degraded, both JSON)."""
        return self._answer(self._request("/healthz", None), "/healthz")

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._request(path, params)
        if response.status_code != 200:
            raise ServiceError(f"{path}: HTTP {response.status_code}: {self._errors(response, path)}")
        return self._answer(response, path)

    def _request(self, path: str, params: dict[str, Any] | None) -> requests.Response:
        try:
            return self._session.get(self.gateway + path, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise GatewayUnavailableError(
                f"cannot reach the gateway {self.gateway} ({type(exc).__name__}): check the URL and that the "
                "service runs (`medmeter serve status` on the platform)."
            ) from exc

    def _answer(self, response: requests.Response, path: str) -> dict[str, Any]:
        """The JSON object the service answers; one sentence if what answered is not the service."""
        try:
            answer = response.json()
        except ValueError:  # requests' JSONDecodeError
            answer = None
        if not isinstance(answer, dict) or (path == "/v1/interactions" and not isinstance(answer.get("items"), list)):
            raise ServiceError(
                f"{self.gateway}{path} answered HTTP {response.status_code} with something other than the medmeter "
                "service's answer: check --gateway (the service's base URL, as `medmeter serve` prints it)."
            )
        return answer

    def _errors(self, response: requests.Response, path: str) -> str:
        """The messages of an error answer, or the sentence that the URL does not lead to the service."""
        try:
            return "; ".join(str(e["message"]) for e in response.json()["errors"])
        except (ValueError, KeyError, TypeError):
            return (
                f"{self.gateway}{path} is not the medmeter service's API: check --gateway (the service's base URL, "
                "as `medmeter serve` prints it)."
            )
