"""Kiln client."""
