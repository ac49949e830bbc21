"""Networks: template-bank layers, (S)WRNs, (S)FCNs, the registry, the builder from tensor shapes
and user models. Import the submodules; this package imports nothing (torch loads on use)."""
