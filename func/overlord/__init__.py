"""func.overlord: the overlord API."""
