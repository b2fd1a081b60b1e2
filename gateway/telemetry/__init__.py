"""Telemetry: metrics and traces of served requests, fed by the request observers."""
