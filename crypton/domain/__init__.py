"""The exchange core: pure, typed and deterministic. No I/O, no clock, no randomness."""
