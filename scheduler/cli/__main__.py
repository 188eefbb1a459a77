"""`python -m scheduler.cli`: how `run` starts its worker and dispatcher, and the tests
start piapi-bulk."""

from scheduler.cli import main

if __name__ == "__main__":  # not when imported (the deploy test imports every module)
    main()
