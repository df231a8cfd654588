"""Shared vocabulary of tfwarden: value types, the exception tree and the clock. No I/O."""
