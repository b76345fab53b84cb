"""Turso / libSQL storage for durably. Not implemented yet."""
