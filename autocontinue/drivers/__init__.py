"""Drivers: loops that execute a :class:`~autocontinue.core.Continuation`'s actions, and nothing else."""
