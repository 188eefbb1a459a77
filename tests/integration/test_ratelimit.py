"""The fleet-wide token bucket on a real Redis, shared by several processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from workers.ratelimit import TokenBucket

GRABBER = """
import json, sys, time
import redis
from workers.ratelimit import TokenBucket
url, rate, burst_s, until = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
bucket = TokenBucket(redis.Redis.from_url(url), "test:bucket", rate, burst_s=burst_s)
grants = []
while time.time() < until:
    bucket.acquire(timeout_s=10)
    grants.append(time.time())
print(json.dumps(grants))
"""


def test_never_more_than_the_rate_across_processes(redis_url: str) -> None:
    rate, burst_s, processes, run_s = 40.0, 0.5, 4, 3.0
    until = time.time() + 1.0 + run_s  # time for the interpreters to start
    procs = [subprocess.Popen([sys.executable, "-c", GRABBER, redis_url, str(rate),
                               str(burst_s), str(until)], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    grants: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        grants += json.loads(out)
    grants.sort()
    burst = max(1.0, rate * burst_s)
    assert len(grants) > rate  # they really competed for a while
    # In every window, at most burst + rate x window tokens were granted (a little slack
    # for the moment a process reads the clock after its grant).
    for i, start in enumerate(grants):
        for end in (start + 0.5, start + 1.0, start + 2.0):
            n = sum(1 for g in grants[i:] if g <= end)
            assert n <= burst + rate * (end - start) + 2, (start, end, n)
    assert len(grants) <= burst + rate * (grants[-1] - grants[0]) + 2


def test_a_lower_rate_passed_per_call_applies_at_once(redis_url: str) -> None:
    sleeps: list[float] = []
    client = redis.Redis.from_url(redis_url)
    bucket = TokenBucket(client, "test:bucket2", rate_per_s=1000, burst_s=0.01,
                         sleep=sleeps.append)
    for _ in range(20):
        bucket.acquire(rate_per_s=10)
    # The sleeps are not real, so each grant is reserved further ahead: the 20th token at
    # 10/s with a burst of 1 is reserved about 1.9 s out, not 0.019 s (the 1000/s rate).
    assert max(sleeps) == pytest.approx(1.9, abs=0.1)
