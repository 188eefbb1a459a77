"""A faithful local stand-in for the PiAPI task API, served over real HTTP on loopback.

Imports nothing from the rest of the project: it plays a remote service. Modules, in the
order a request flows through them:

- `cli` / `__main__`: the `emulator` command; builds an `EmulatorConfig`, serves with uvicorn.
- `config`: `EmulatorConfig`, every setting with its default.
- `latency`: the network between client and emulator (an async delay, half before
  handling, half before the answer), when `--latency-ms` asks for one.
- `app`: `create_app(config)`; PiAPI routes behind auth, edge faults and the rate limit.
- `control_api`: the unauthenticated `/_emulator/` API (stats, ledger, files, config, advance
  the clock, reset).
- `runtime`: wires the parts together and runs the timer that drives state changes.
- `ratelimit`, `faults`: the request budget and seeded fault draws.
- `parsing`, `catalog`, `inputs`, `validation`: create bodies → validated, normalised
  requests (the model table; each model's input fields; typed checks).
- `engine`: the simulated account (task lifecycle on a timer heap, concurrency, cancel).
- `outputs`: each model's `output` shape, with ids and URLs derived from the task id.
- `tasks`, `metrics`, `history`, `views`: task state and JSON, counters, history index, views.
- `uploads`: the upload endpoint's store (files in memory, served back, in the ledger).
- `files`: the fake output files (size, some gone, held while paused) and their ledger.
- `webhooks`: delivery to loopback receivers; `counters`, `clock`, `responses`: small helpers.

By default it answers the least generous way PiAPI's docs allow (REFERENCE.md): history rows
with the documented fields only (no input), filtered by documented family names and listed a
few seconds late; /account/active_tasks with the six documented families only. The more
generous answers are options (`history_shape="full"`, `history_model_filter="exact"`,
`active_tasks_families="all"`, ...); see `config`.
"""
