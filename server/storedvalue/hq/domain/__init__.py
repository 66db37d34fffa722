"""Business rules of stored value: plain Python, no I/O, no protobuf, no imports of ours."""
