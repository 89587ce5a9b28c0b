"""Layers: KronLinear (one block pattern), PatternSelectLinear (several competing), kronify."""
