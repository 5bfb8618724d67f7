"""Load as an LLM proxy produces it: many users, each request debited once with its own id, and
the streaming flow: reserve before the call, commit the priced usage after it (or release the
hold when the call fails).

Run headless against any gateway (an admin key is needed to top up the test users):

    METERING_API_KEY=dev-admin-key locust -f loadtests/locustfile.py --headless \
        -u 50 -r 10 -t 30s --host http://127.0.0.1:8000

METERING_LOAD_USERS sets how many distinct user ids are spread over (default 1000).
"""

from __future__ import annotations

import os
import random
import uuid

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

API_KEY = (
    os.environ.get("METERING_API_KEY") or os.environ.get("METERING_ADMIN_KEY") or "dev-admin-key"
)
USERS = int(os.environ.get("METERING_LOAD_USERS", "1000"))
RUN = uuid.uuid4().hex[:8]


class ProxyUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.user_id = f"load-{RUN}-{random.randrange(USERS)}"
        self.client.post(
            "/api/v1/credits/grant",
            json={
                "user_id": self.user_id,
                "amount": "100000",
                "request_id": f"topup-{uuid.uuid4()}",
            },
            headers=self._auth(),
            name="grant",
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    @task(20)
    def debit(self) -> None:
        self.client.post(
            "/api/v1/credits/debit",
            json={
                "user_id": self.user_id,
                "amount": "0.001250",
                "request_id": str(uuid.uuid4()),
                "model": "gpt-4o-mini",
                "input_tokens": 512,
                "output_tokens": 128,
            },
            headers=self._auth(),
            name="debit",
        )

    @task(2)
    def retry_same_request(self) -> None:
        body = {"user_id": self.user_id, "amount": "0.0005", "request_id": str(uuid.uuid4())}
        for _ in range(2):  # the second is a replay: charged once
            self.client.post(
                "/api/v1/credits/debit", json=body, headers=self._auth(), name="debit-retry"
            )

    @task(4)
    def reserve_then_commit(self) -> None:
        """A streamed completion: hold an estimate, then charge what the call cost; one call in
        ten fails and its hold is released instead."""
        held = self.client.post(
            "/api/v1/credits/reservations/",
            json={"user_id": self.user_id, "amount": "0.02", "request_id": str(uuid.uuid4())},
            headers=self._auth(),
            name="reserve",
        )
        if held.status_code != 201 or held.json() is None:
            return
        reservation = held.json()["reservation_id"]
        if random.random() < 0.1:
            self.client.delete(
                f"/api/v1/credits/reservations/{reservation}",
                headers=self._auth(),
                name="release",
            )
            return
        self.client.post(
            f"/api/v1/credits/reservations/{reservation}/commit",
            json={
                "amount": "0.013750",
                "model": "gpt-4o",
                "input_tokens": 900,
                "output_tokens": 310,
            },
            headers=self._auth(),
            name="commit",
        )

    @task(1)
    def balance(self) -> None:
        self.client.get(
            f"/api/v1/credits/balance?user_id={self.user_id}", headers=self._auth(), name="balance"
        )
