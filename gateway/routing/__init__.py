"""Routing: which version answers a request, and which versions see a copy of it."""
