"""Tests of the PiAPI emulator."""
