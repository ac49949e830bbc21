"""Training: the epoch loop, recipes, regularisers and resuming."""
