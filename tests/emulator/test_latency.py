"""Network latency (emulator.latency): the option's parsing, the draws, and real requests
delayed over HTTP (lower bounds only), concurrently, with creates on their own range."""

from __future__ import annotations

import calendar
import random
import threading
import time

import httpx
import pytest

from emulator.config import EmulatorConfig, parse_latency_ms
from emulator.latency import draw_delay_s
from tests.emulator.conftest import LIVE_KEY, Live, Receiver, joy
from tests.helpers import wait_until


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", (0.0, 0.0)),
    ("150", (0.15, 0.0)),
    ("150:50", (0.15, 0.05)),
    ("150:", (0.15, 0.0)),  # an empty jitter reads as none
    ("1000:500", (1.0, 0.5)),
    ("100:300", (0.1, 0.3)),  # jitter above the mean: draws clamp at 0
    ("2.5:0.5", (0.0025, 0.0005)),
])
def test_latency_option_parses_mean_and_jitter_in_ms(
    text: str, seconds: tuple[float, float]
) -> None:
    assert parse_latency_ms(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", ":", "x", "150:x", "-1", "150:-1", "1:2:3",
                                  "nan", "inf", "150:inf"])
def test_bad_latency_options_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="MEAN"):
        parse_latency_ms(text)


@pytest.mark.parametrize("settings", [
    {"network_latency_s": (-0.1, 0.0)}, {"network_latency_s": (0.1, -0.1)},
    {"network_create_latency_s": (float("nan"), 0.0)},
])
def test_negative_or_nan_latency_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="latency"):
        EmulatorConfig.model_validate(settings)


def test_draws_are_uniform_within_the_range_clamped_at_zero_and_repeat_by_seed() -> None:
    rng = random.Random("latency-7")
    draws = [draw_delay_s((0.15, 0.05), rng) for _ in range(2000)]
    assert min(draws) >= 0.10 and max(draws) <= 0.20
    assert min(draws) < 0.11 and max(draws) > 0.19  # the whole range, not a point
    assert draw_delay_s((0.3, 0.0), rng) == 0.3
    clamped = [draw_delay_s((0.1, 0.3), rng) for _ in range(2000)]
    assert min(clamped) == 0.0 and max(clamped) <= 0.4
    again = random.Random("latency-7")
    assert [draw_delay_s((0.15, 0.05), again) for _ in range(2000)] == draws


# ---- over HTTP -----------------------------------------------------------------------------

def _unix(text: str) -> float:
    """The emulator's RFC 3339 UTC time (9 fractional digits) as unix seconds."""
    base, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def _timed(call: httpx.Client, method: str, path: str, **kw: object) -> tuple[float, float]:
    started = time.time()
    response = call.request(method, path, **kw)  # type: ignore[arg-type]
    ended = time.time()
    assert response.status_code == 200, response.text
    return started, ended


@pytest.mark.integration  # the live emulator
def test_requests_take_at_least_their_delay_and_creates_their_own(live: Live) -> None:
    live.configure(network_latency_s=[0.3, 0.0], network_create_latency_s=[0.8, 0.0])
    started, ended = _timed(live.http, "GET", "/account/info")
    assert ended - started >= 0.3
    started, ended = _timed(live.http, "POST", "/api/v1/task", json=joy())
    assert ended - started >= 0.8
    # Half before handling: the task was created at least 0.4 s after the request left.
    (task,) = live.ledger()
    assert _unix(task["created_at"]) >= started + 0.4 - 0.01
    started, ended = _timed(live.http, "GET", f"/api/v1/task/{task['task_id']}")
    assert ended - started >= 0.3


@pytest.mark.integration  # the live emulator
def test_the_control_api_is_not_delayed(live: Live) -> None:
    live.configure(network_latency_s=[600.0, 0.0])  # an API request would outlast the test
    assert live.stats()["creates"] == 0
    assert live.config()["network_latency_s"] == [600.0, 0.0]


@pytest.mark.integration  # the live emulator
def test_a_create_whose_answer_is_late_is_created_anyway(live: Live) -> None:
    live.configure(network_create_latency_s=[1.0, 0.0])
    # Timing out in the second half (the answer travelling) loses the answer, not the task.
    with pytest.raises(httpx.ReadTimeout):
        live.http.post("/api/v1/task", json=joy(), timeout=httpx.Timeout(5, read=0.75))
    wait_until(lambda: len(live.ledger()) == 1, timeout_s=10, what="the task to be created")


@pytest.mark.integration  # the live emulator
def test_two_delayed_requests_are_handled_at_the_same_time(live: Live) -> None:
    live.configure(network_create_latency_s=[1.0, 0.0])
    spans: dict[str, tuple[float, float]] = {}
    ready = threading.Barrier(2)

    def create(name: str) -> None:
        with httpx.Client(base_url=live.url, headers={"x-api-key": LIVE_KEY},
                          timeout=10) as client:
            ready.wait(timeout=10)
            spans[name] = _timed(client, "POST", "/api/v1/task",
                                 json=joy(f"https://example.test/{name}.png"))

    threads = [threading.Thread(target=create, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert set(spans) == {"a", "b"}
    created = [_unix(task["created_at"]) for task in live.ledger()]
    assert len(created) == 2
    # Each task is created between its request's two halves. Both were created before
    # either answer arrived: the two delays ran at once (served one after the other, the
    # second would be created only after the first answer).
    first_answer = min(ended for _, ended in spans.values())
    assert max(created) < first_answer
    assert all(started < first_answer for started, _ in spans.values())


@pytest.mark.integration  # the live emulator
def test_webhooks_cross_the_network_one_way(live: Live, receiver: Receiver) -> None:
    live.configure(network_latency_s=[0.8, 0.0], webhook_events=["completed"])
    hook = {"webhook_config": {"endpoint": receiver.url, "secret": "s"}}
    live.create({**joy(), "config": hook})
    wait_until(lambda: len(receiver.events()) == 1, timeout_s=20, what="the completed webhook")
    (_, event), arrived = receiver.events()[0], receiver.arrived[0]
    assert arrived - _unix(event["data"]["meta"]["ended_at"]) >= 0.4
