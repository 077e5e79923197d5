"""Per-tenant usage: what each known tenant's requests cost, added up across replicas."""
