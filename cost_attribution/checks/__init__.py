"""checks domain."""
