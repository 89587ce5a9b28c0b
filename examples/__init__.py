"""Examples of one's own model and data for kronsearch space files (see docs/own-model.md)."""
