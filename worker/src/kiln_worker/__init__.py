"""Kiln worker."""
