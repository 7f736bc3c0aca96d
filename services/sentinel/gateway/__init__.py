"""The edge gateway: Envoy configuration generated from the proto contracts.

One generator (:mod:`sentinel.gateway.envoy`) feeds the dev launcher, the committed
``gateway/envoy.dev.yaml`` and the NixOS module, so they cannot drift apart.
"""

from sentinel.gateway.envoy import GatewayConfig, render, render_yaml, write_descriptor_set

__all__ = ["GatewayConfig", "render", "render_yaml", "write_descriptor_set"]
