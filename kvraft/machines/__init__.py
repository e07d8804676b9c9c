"""kvraft.machines."""
