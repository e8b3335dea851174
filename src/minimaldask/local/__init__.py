"""The local backend: the scheduler and workers as processes on this machine."""
