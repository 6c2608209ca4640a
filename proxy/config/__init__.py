"""The mesh model (validated frozen dataclasses) and its YAML loader."""
