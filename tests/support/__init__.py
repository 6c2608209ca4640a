"""Shared test helpers: the namespace lab and the CI rule for missing prerequisites."""
