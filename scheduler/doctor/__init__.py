"""`piapi-bulk doctor`: checks the account's PiAPI before a large run and stores what it found.

Modules, in the order a check runs:

- `command`: the command end to end (key, account, active_tasks, probe, history, store).
- `probe`: `--probe`, one Flux schnell task watched in the history and read back by GET.
- `checks`: the manifest's models, the history read with and without filters, and the
  findings concluded from what was seen (`workers.findings.Findings`).
- `view`: the screen, `--json`, the modes `run` will use, warnings, the `status` line.
"""
