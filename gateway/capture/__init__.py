"""request records: buffer, write-ahead log, Parquet compaction, drift statistics"""
