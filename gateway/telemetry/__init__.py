"""What every arm is doing, for operators: Prometheus metrics kept in per-thread shards, summed at
scrape time, and summed across a supervisor's gateway processes."""
