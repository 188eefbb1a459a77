"""Reconciliation: finding out whether a create whose answer was lost made a PiAPI task.

- `decide`: the pure judgement of PiAPI's history around the attempt (candidates, verdicts);
- `settle`: the worker side, reading the history and the candidates' tasks;
- `records`: the database side, the compare-and-set moves of ambiguous rows and attempts.

Nothing is imported here, so `workers.transitions` can use `records` without a cycle.
"""
