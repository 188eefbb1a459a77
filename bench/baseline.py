"""The runner a user would write instead of piapi-bulk: asyncio, a semaphore of C, 2 s polling.

    python -m bench.baseline MANIFEST.jsonl --base-url URL --concurrency C [--poll-s 2]
        [--out results.jsonl] [--summary summary.json]

Reads the same JSONL manifest (model, task_type, input per row) and PIAPI_API_KEY from the
environment. Each row holds one semaphore slot from its create until a GET sees it finished;
a refused or failed request (429, 5xx, network) is retried a few times after `poll_s`. It
keeps nothing on disk until the end, so it cannot resume: that is the point of comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

MAX_TRIES = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DONE = frozenset({"completed", "failed"})
TIMEOUT_S = 30.0
"""Every HTTP timeout: well above the slowest answer of any scenario (creates of 1.5 s in
scenarios 8 and 9), so a slow create is waited for, never abandoned mid-flight."""
POLLS_PER_MEAN_TASK = 12.0
"""Where tasks last well under a second (scenarios 3 and 10), the baseline polls this many
times per mean task duration instead of every 2 s: a user who knows the tasks take 0.15 to
0.45 s polls every 25 ms, as the side-by-side runner of issue 13 did (13.6 GETs a task)."""


def short_poll_s(mean_task_s: float) -> float:
    """The baseline's poll interval for short tasks of this mean duration."""
    return mean_task_s / POLLS_PER_MEAN_TASK


class Baseline:
    """One run over a manifest: a shared client, a semaphore and request counters."""

    def __init__(self, client: httpx.AsyncClient, concurrency: int, poll_s: float) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(concurrency)
        self.poll_s = poll_s
        self.counts: Counter[str] = Counter()

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any] | None:
        """One API call with a few retries; the `data` of the answer, or None."""
        for _ in range(MAX_TRIES):
            self.counts[method] += 1
            try:
                response = await self.client.request(method, path, json=body)
            except httpx.TransportError:
                self.counts["transport_errors"] += 1
            else:
                if response.status_code not in RETRY_STATUSES:
                    if response.status_code != 200:
                        self.counts[f"http_{response.status_code}"] += 1
                        return None
                    return dict(response.json()["data"])
                self.counts[f"http_{response.status_code}"] += 1
            await asyncio.sleep(self.poll_s)
        return None

    async def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Create the row's task and poll it every `poll_s` until it is finished."""
        async with self.sem:
            body = {"model": row["model"], "task_type": row["task_type"], "input": row["input"]}
            data = await self.request("POST", "/api/v1/task", body)
            if data is None:
                return {"id": row.get("id"), "status": "failed", "error": "create failed"}
            task_id = data["task_id"]
            while data is None or data["status"] not in DONE:
                await asyncio.sleep(self.poll_s)
                data = await self.request("GET", f"/api/v1/task/{task_id}")
            return {"id": row.get("id"), "status": data["status"], "task_id": task_id,
                    "output": data.get("output")}


async def run(manifest: Path, base_url: str, concurrency: int, poll_s: float,
              api_key: str) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Every row of `manifest` through the API; results in manifest order and counters."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": api_key},
                                 timeout=TIMEOUT_S, limits=limits, trust_env=False) as client:
        baseline = Baseline(client, concurrency, poll_s)
        results = await asyncio.gather(*(baseline.row(r) for r in rows))
    return list(results), baseline.counts


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("baseline.results.jsonl"))
    parser.add_argument("--summary", type=Path)
    args = parser.parse_args()
    started = time.time()
    results, counts = asyncio.run(run(args.manifest, args.base_url, args.concurrency,
                                      args.poll_s, os.environ["PIAPI_API_KEY"]))
    done_at = time.time()
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    statuses = Counter(r["status"] for r in results)
    summary = {"started_at": started, "done_at": done_at, "rows": len(results),
               "finished": len(results), "by_status": dict(statuses),
               "requests": dict(counts)}
    text = json.dumps(summary)
    if args.summary:
        args.summary.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
