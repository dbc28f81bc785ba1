"""Integrations with web frameworks; each needs its framework installed (``litetask_async[django]``)."""
