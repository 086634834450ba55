"""Backup and restore of a cluster: the journal at its original offsets and timestamps,
the API's schema and the projections (docs/operations.md, "Backup and restore")."""

from aosk.backup.archive import Manifest
from aosk.backup.run import BackupOptions, create_backup, restore_backup, verify_backup

__all__ = ["Manifest", "BackupOptions", "create_backup", "verify_backup", "restore_backup"]
