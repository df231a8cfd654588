"""Declarative rules turning findings into decisions; pure functions, no I/O."""
