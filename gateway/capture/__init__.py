"""Request records: the capture observer's buffer, write-ahead log and Parquet compaction, and drift
statistics over what was captured."""
