"""The domain core: pure Python, no I/O, no clock, no randomness, no environment."""
