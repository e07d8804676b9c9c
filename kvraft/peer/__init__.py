"""kvraft.peer."""
