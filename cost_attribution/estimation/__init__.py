"""estimation domain."""
