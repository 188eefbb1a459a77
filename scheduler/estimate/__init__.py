"""`piapi-bulk estimate` and `run --dry-run`: what a manifest would cost and take, before paying.

Modules, in the order an estimate runs:

- `command`: the command end to end (usage errors, the account, learned durations).
- `tally`: the rows validated as ingest would and added up per kind; the wall-time model.
- `view`: the table and lines, or `--json`.
"""
