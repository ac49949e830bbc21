"""Reading and writing checkpoints: the pickle scan, the torch-free mapped reader, containers."""
