"""The model registry: where model versions and their settings come from."""
