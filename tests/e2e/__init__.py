"""End-to-end: a real HQ server (in process on port 0, or a `storedvalue serve` process)
through real channels."""
