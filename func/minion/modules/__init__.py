"""func.minion.modules: where func modules import their base class from."""
