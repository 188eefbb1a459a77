"""`python -m chaos` / `make chaos`: piapi-bulk against a faulty emulator while its processes,
Redis and PostgreSQL are killed and restarted; checked against the emulator's own ledger.

- `plan`: sizes, emulator faults and the fleet's settings (full and --quick).
- `pg`: the run's private PostgreSQL (initdb, pg_ctl, a free port; never the shared one).
- `fleet`: workers, dispatchers and Redis as the supervisor owns them; the kills.
- `watch`: progress read from the database; the stall watch (liveness by progress).
- `run`: one chaos run from start to the exported results, with its disruptions.
- `checks`: what must hold at the end (rows lost, paid twice, outputs, failures, in-flight).
- `report`: recovery times and the JSON report.
- `ending`: the end of a run, shared with `fleet`: drain, export, evidence, report, verdict.
"""
