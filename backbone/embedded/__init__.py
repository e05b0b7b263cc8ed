"""Embedded runtime pieces used when no production endpoints are configured."""
