"""One file per schema revision, oldest first (a package so the wheel ships them)."""
