"""`python -m emulator`: run the emulator command.

Its modules (uvicorn, Starlette, pydantic) load with the cyclic collector paused, then frozen
out of its passes: the passes found nothing to free and cost about a sixth of start-up (the
reasoning and measurement are in scheduler/cli/startup.py; the emulator imports nothing of the
project's other packages, so the three lines are repeated here).
"""

import gc

gc.disable()
import typer  # noqa: E402

from emulator.cli import emulator_command  # noqa: E402

gc.freeze()
gc.enable()

if __name__ == "__main__":
    typer.run(emulator_command)
