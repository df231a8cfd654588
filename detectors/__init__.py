"""Detectors: pure, deterministic judges over samples. No I/O, no clocks of their own."""
