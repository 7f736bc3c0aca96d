"""Observability as code: Prometheus recording rules and alerts generated from alerts/slo.yaml.

See :mod:`sentinel.observability.rules` and alerts/README.md.
"""
