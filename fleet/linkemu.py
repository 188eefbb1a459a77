"""`python -m fleet.linkemu A B`: a userspace link between two TAP devices that, while
impaired, holds each Ethernet frame for a delay (± jitter, order kept per direction) and
drops some at random, so the TCP connections over it see real latency, loss and
retransmits.

Why: the impaired path between the workers and `api` would be `tc qdisc ... netem`, but
kernels without the netem module (like the one this harness was written on: "Specified
qdisc kind is unknown") cannot do it; the harness uses netem when it works and this
otherwise. The devices are created here (non-persistent: they vanish when this process
exits) in the namespace it runs in; the harness moves A into `api` and puts B on the bridge.
SIGUSR1 turns the impairment on, SIGUSR2 off; SIGTERM ends it. Counters are printed as
one JSON line at each change and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import json
import os
import random
import signal
import struct
import sys
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FRAME_MAX = 65536


def open_tap(name: str) -> int:
    """A new TAP device `name` (Ethernet frames, no packet info); its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


@dataclass
class Impairment:
    """What the link does to a frame while impaired (the values come from the options,
    whose defaults are the fleet plan's)."""

    delay_s: float
    """Each frame held this long, each way..."""
    jitter_s: float
    """...give or take up to this much (uniform)."""
    loss: float
    """The share of frames dropped."""
    on: bool = False
    """Impaired now (SIGUSR1) or healed (SIGUSR2): frames pass at once."""


def release_at(now: float, last: float, delay_s: float, jitter: float) -> float:
    """When a frame arriving at `now` leaves: after its delay plus `jitter` (drawn by the
    caller), never before the frame ahead of it (`last`), so a direction keeps its order."""
    return max(last, now + max(0.0, delay_s + jitter))


@dataclass
class Lane:
    """One direction: frames waiting to leave, and its counters."""

    dst: int
    queue: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    last: float = 0.0
    timer: asyncio.TimerHandle | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class Link:
    """Two TAP fds forwarded both ways through `Impairment`."""

    def __init__(self, a: int, b: int, imp: Impairment, rng: random.Random) -> None:
        self.imp, self.rng = imp, rng
        self.loop = asyncio.get_running_loop()
        self.lanes = {a: Lane(b), b: Lane(a)}

    def start(self) -> None:
        """Read both devices."""
        for src in self.lanes:
            self.loop.add_reader(src, self._on_readable, src)

    def _on_readable(self, src: int) -> None:
        lane = self.lanes[src]
        while True:
            try:
                frame = os.read(src, FRAME_MAX)
            except BlockingIOError:
                return
            except OSError:
                lane.counts["read_errors"] += 1
                return
            self._take(lane, frame)

    def _take(self, lane: Lane, frame: bytes) -> None:
        imp, now = self.imp, self.loop.time()
        if imp.on and self.rng.random() < imp.loss:
            lane.counts["dropped"] += 1
            return
        if not imp.on and not lane.queue:
            self._write(lane, frame)
            return
        delay = imp.delay_s if imp.on else 0.0
        jitter = self.rng.uniform(-imp.jitter_s, imp.jitter_s) if imp.on else 0.0
        lane.last = release_at(now, lane.last, delay, jitter)
        lane.queue.append((lane.last, frame))
        lane.counts["delayed"] += 1
        if lane.timer is None:
            lane.timer = self.loop.call_at(lane.queue[0][0], self._flush, lane)

    def _flush(self, lane: Lane) -> None:
        lane.timer = None
        now = self.loop.time()
        while lane.queue and lane.queue[0][0] <= now:
            self._write(lane, lane.queue.popleft()[1])
        if lane.queue:
            lane.timer = self.loop.call_at(lane.queue[0][0], self._flush, lane)

    def _write(self, lane: Lane, frame: bytes) -> None:
        try:
            os.write(lane.dst, frame)
            lane.counts["forwarded"] += 1
        except OSError:  # the device's queue is full or it is down: the frame is lost
            lane.counts["write_errors"] += 1

    def report(self, event: str) -> None:
        """One JSON line: the event and every counter of both directions."""
        a, b = self.lanes.values()
        print(json.dumps({"event": event, "impaired": self.imp.on, "a_to_b": dict(b.counts),
                          "b_to_a": dict(a.counts)}), flush=True)


async def serve(a_name: str, b_name: str, imp: Impairment, seed: int) -> None:
    """Create both devices, forward until SIGTERM/SIGINT."""
    a, b = open_tap(a_name), open_tap(b_name)
    link = Link(a, b, imp, random.Random(seed))
    link.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def turn(on: bool) -> None:
        imp.on = on
        link.report("impaired" if on else "healed")

    loop.add_signal_handler(signal.SIGUSR1, turn, True)
    loop.add_signal_handler(signal.SIGUSR2, turn, False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(json.dumps({"event": "ready", "a": a_name, "b": b_name}), flush=True)
    await done.wait()
    link.report("end")
    os.close(a)
    os.close(b)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and forward (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m fleet.linkemu", description=__doc__)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--delay-ms", type=float, default=200.0)
    p.add_argument("--jitter-ms", type=float, default=20.0)
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    imp = Impairment(args.delay_ms / 1000, args.jitter_ms / 1000, args.loss)
    asyncio.run(serve(args.a, args.b, imp, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
