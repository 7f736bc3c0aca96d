"""AuditService (hash-chained audit trail)."""
