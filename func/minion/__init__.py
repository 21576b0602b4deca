"""minion."""
