"""The inference use case: the dataplane, model versions and their batching, request checks, statistics."""
