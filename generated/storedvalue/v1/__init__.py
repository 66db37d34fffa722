"""Generated from protos/storedvalue/v1 by scripts/generate_protos.py."""
