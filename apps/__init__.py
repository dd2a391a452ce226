"""Applications built on continuations."""
