"""Rate limiting: the tiers and classes (``rules``) and the Redis limiter the services count with (``limiter``)."""
