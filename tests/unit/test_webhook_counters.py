"""The webhook receiver's /stats JSON: every count present from the start, in a fixed
order, with each ignored or rejected call's reason counted."""

from __future__ import annotations

import json

from scheduler.webhook_server import Counters


def test_stats_start_at_zero_with_every_key() -> None:
    assert json.dumps(Counters().stats()) == json.dumps(
        {"received": 0, "due": 0, "ignored": 0, "rejected": 0, "reasons": {}})


def test_ignored_and_rejected_calls_are_counted_with_their_reasons() -> None:
    counters = Counters()
    for _ in range(3):
        counters.add("received")
    counters.add("due")
    assert json.loads(bytes(counters.ignore("not terminal").body)) == {
        "ok": True, "ignored": "not terminal"}
    assert counters.reject("bad token", 404).status_code == 404
    counters.reject("bad token", 404)
    assert counters.stats() == {"received": 3, "due": 1, "ignored": 1, "rejected": 2,
                                "reasons": {"not terminal": 1, "bad token": 2}}
