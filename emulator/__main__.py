"""`python -m emulator`: run the emulator command."""

import typer

from emulator.cli import emulator_command

if __name__ == "__main__":
    typer.run(emulator_command)
