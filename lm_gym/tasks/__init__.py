"""One module per task family; each module's docstring documents its environments."""
