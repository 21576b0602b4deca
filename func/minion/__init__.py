"""func.minion: the module API and func's exception codes."""
