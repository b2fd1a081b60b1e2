"""The control use cases: policy changes, rollbacks, explicit loads, sync across processes, shadows."""
