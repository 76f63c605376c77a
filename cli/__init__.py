"""The `opus-sessions` command line."""
