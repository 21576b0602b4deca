"""overlord."""
