"""The prompt registry: immutable versions, status moves, audit log, stores, snapshots."""
