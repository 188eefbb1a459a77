"""Network latency between client and emulator: an async delay around every API request.

On loopback a round trip costs nothing, while the real PiAPI is 100-300 ms away and a create
can take a second or more: every step of a client that waits on a round trip costs slot time
that no loopback benchmark shows. With latency on, each request draws one delay, uniform in
[mean - jitter, mean + jitter] clamped at 0 (creates from their own, longer range), from a
stream seeded by `seed` (runs repeat), and spends it in two halves:

- half before the handler runs: the request travelling. Its body is read first, so a
  client that gives up meanwhile still has its request handled, as on a real network;
- half before the answer's first byte goes out: the answer travelling. A client that times
  out then has a task created whose answer it never saw: an ambiguous create.

Webhooks cross the same network: each delivery attempt first waits half a draw of the
request range (one way). The delay is real wall time, not scaled by `time_scale`: it models
the network, not the task. Both halves are `asyncio.sleep`s, so any number of requests wait
at once without a thread each. The control API (`/_emulator/...`) is not delayed: tests and
harnesses observe the emulator, they are not its clients.
"""

from __future__ import annotations

import asyncio
import random

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.config import EmulatorConfig

CONTROL_PREFIX = "/_emulator/"
CREATE_PATH = "/api/v1/task"


def draw_delay_s(spread: tuple[float, float], rng: random.Random) -> float:
    """One delay in seconds for `spread` = (mean, jitter): uniform in [mean - jitter,
    mean + jitter], clamped at 0."""
    mean, jitter = spread
    if jitter == 0:
        return mean
    return max(0.0, rng.uniform(mean - jitter, mean + jitter))


def _spread(config: EmulatorConfig, scope: Scope) -> tuple[float, float]:
    create = scope["method"] == "POST" and scope["path"].rstrip("/") == CREATE_PATH
    if create and config.network_create_latency_s is not None:
        return config.network_create_latency_s
    return config.network_latency_s


async def _read_body(receive: Receive) -> list[Message]:
    """Every message of the request's body, as received."""
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body"):
        messages.append(await receive())
    return messages


class NetworkLatency:
    """ASGI middleware: delays each API request and its answer (see the module docstring).

    Reads `config` at each request, so `POST /_emulator/config` changes it at runtime."""

    def __init__(self, app: ASGIApp, config: EmulatorConfig, rng: random.Random) -> None:
        self.app = app
        self.config = config
        self.rng = rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope, delayed when it is an API request."""
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        delay_s = draw_delay_s(_spread(self.config, scope), self.rng)
        if delay_s <= 0:
            await self.app(scope, receive, send)
            return
        received = await _read_body(receive)
        await asyncio.sleep(delay_s / 2)

        async def replay() -> Message:
            # The body as it arrived, then the live channel (a disconnect, for hung creates).
            return received.pop(0) if received else await receive()

        answer_wait = [delay_s / 2]

        async def delayed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and answer_wait:
                await asyncio.sleep(answer_wait.pop())
            await send(message)

        await self.app(scope, replay, delayed_send)
