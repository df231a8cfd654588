"""Probes observe, never decide: each returns results or samples and never raises for a failing
target."""
