"""Folded networks: building, saving, loading and verifying networks with real loops."""
