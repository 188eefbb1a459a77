"""A faithful local stand-in for the PiAPI task API, served over real HTTP on loopback."""
