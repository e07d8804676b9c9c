"""kvraft.testing."""
