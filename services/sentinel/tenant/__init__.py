"""TenantService."""
