"""Kiln service."""
