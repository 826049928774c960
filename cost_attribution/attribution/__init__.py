"""attribution domain."""
