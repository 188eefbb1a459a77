"""`python -m scheduler.cli`: how `run` starts its worker and dispatcher, and the tests
start piapi-bulk."""

from scheduler.cli import main

main()
