"""`make fleet`: piapi-bulk on several hosts made of Linux network namespaces, disrupted
with real network faults (a host cut off, latency and loss, a partition from Redis) and
checked against the emulator's ledger. Run from a checkout as root, like bench/ and chaos/;
not installed with the wheel."""
