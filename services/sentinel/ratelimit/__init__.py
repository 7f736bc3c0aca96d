"""Edge rate limiting: Envoy's global rate-limit service, backed by Redis."""
