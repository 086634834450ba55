"""Avro schemas of the journal, one .avsc per event type and version; installed as aosk.schemas."""
