"""AOSK PostgreSQL projectors; installed as aosk.projectors."""
