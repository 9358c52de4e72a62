"""The home server's embedded state (SQLite): bindings, replay state."""
