"""A faithful local stand-in for the PiAPI task API, served over real HTTP on loopback.

Imports nothing from the rest of the project: it plays a remote service. Modules, in the
order a request flows through them:

- `cli` / `__main__`: the `emulator` command; builds an `EmulatorConfig`, serves with uvicorn.
- `config`: `EmulatorConfig`, every setting with its default.
- `app`: `create_app(config)`; PiAPI routes behind auth, edge faults and the rate limit.
- `control`: the unauthenticated `/_emulator/` API (stats, ledger, config, reset).
- `runtime`: wires the parts together and runs the timer that drives state changes.
- `ratelimit`, `faults`: the request budget and seeded fault draws.
- `parsing`, `catalog`, `validation`: create bodies → validated, normalised requests.
- `engine`: the simulated account (task lifecycle on a timer heap, concurrency, cancel).
- `tasks`, `metrics`, `history`, `views`: task state and JSON, counters, history index, views.
- `webhooks`: delivery to loopback receivers; `counters`, `clock`, `responses`: small helpers.
"""
