"""Data sets, shard writing and shard reading."""
