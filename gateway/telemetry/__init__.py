"""What every arm is doing, for operators: Prometheus metrics kept in per-thread shards, summed at
scrape time and across a supervisor's gateway processes; OpenTelemetry traces built from the seam's
timings; and each arm's last minute for ``turnout status``."""
