// Placeholder; replaced by the replication core.
