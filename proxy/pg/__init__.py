"""PostgreSQL plumbing shared by every part of the PostgreSQL backend: pools, migrations."""
