"""Data: ``--data`` specs, image loaders and algorithmic task generators."""
