"""Load sanity: thousands of creates and gets from several threads all succeed (no timing)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.emulator.conftest import LIVE_KEY, Live

THREADS = 4
PER_THREAD = 500


def _worker(url: str, worker: int) -> list[int]:
    statuses: list[int] = []
    with httpx.Client(base_url=url, headers={"x-api-key": LIVE_KEY}, timeout=30) as http:
        for i in range(PER_THREAD):
            body = {"model": "Qubico/flux1-schnell", "task_type": "txt2img",
                    "input": {"prompt": f"load {worker}-{i}"}}
            created = http.post("/api/v1/task", json=body)
            statuses.append(created.status_code)
            task_id = created.json()["data"]["task_id"]
            statuses.append(http.get(f"/api/v1/task/{task_id}").status_code)
    return statuses


def test_two_thousand_creates_and_gets_all_succeed(live: Live) -> None:
    live.configure(concurrency=100_000)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda w: _worker(live.url, w), range(THREADS)))
    statuses = [s for r in results for s in r]
    assert len(statuses) == 2 * THREADS * PER_THREAD and set(statuses) == {200}
    stats = live.stats()
    assert stats["creates"] == THREADS * PER_THREAD
    assert stats["requests"]["create"] == stats["requests"]["get"] == THREADS * PER_THREAD
    assert stats["max_creates_per_input"] == 1
