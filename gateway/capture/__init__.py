"""Request records: the capture observer's buffer, its write-ahead log and the Parquet compaction of it."""
