"""Edge telemetry: OTLP/HTTP from devices and browsers (docs/edge.md, when it lands)."""
