"""func."""
