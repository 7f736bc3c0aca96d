"""Every generated Envoy config, two ways: the strict xds-protos check and ``envoy --mode validate``.

Add a ``GatewayConfig`` variant to :func:`config_variants` (and the files it names to
:func:`write_variant_files`) and both checks cover it.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sentinel import cli
from sentinel.gateway import envoy as gw
from sentinel.gateway import openapi, schema
from sentinel.gateway.envoy import GatewayConfig

from tests.support import envoy_binary
from tests.unit.test_gateway_edge import self_signed

REPO = Path(__file__).resolve().parents[2]
DEV_YAML = REPO / "gateway" / "envoy.dev.yaml"


def config_variants(tmp_path: Path) -> dict[str, GatewayConfig]:
    """The configs every check runs on. Paths point under ``tmp_path``; the files they name are
    written by :func:`write_variant_files` (only ``envoy --mode validate`` needs them)."""
    pb, docs = tmp_path / "sentinel.pb", tmp_path / "docs"
    dev = gw.dev_config()
    return {
        # dev_config() with its repo-relative files moved to tmp_path.
        "dev": GatewayConfig(upstreams=dev.upstreams, descriptor_set_path=pb, docs_dir=docs,
                             rate_limits=dev.rate_limits),
        "minimal": GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb),
        "cors": GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb,
                              cors_allowed_origins=("http://localhost:5173", "https://app.example.com")),
        "docs": GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb, docs_dir=docs),
        "dns_upstreams": GatewayConfig(upstreams={b: f"{b}.internal:5000" for b in gw.BACKENDS},
                                       descriptor_set_path=pb, listen_host="0.0.0.0", listen_port=8443),
        "https_jwks": GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb,
                                    jwks_uri="https://id.example.com/.well-known/jwks.json"),
        "ratelimit": GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb, rate_limits={
            "ip": {"auth": "10/second", "write": "unlimited"}, "ip_exempt": ["10.0.0.0/8", "fd00::/8"]}),
        # Everything on: TLS (+ redirect), rate limits, CORS with credentials, docs.
        "tls_everything": GatewayConfig(
            upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=pb, docs_dir=docs, tls_port=8443,
            tls_cert_file=tmp_path / "tls" / "edge.crt", tls_key_file=tmp_path / "tls" / "edge.key",
            rate_limits={"ip_exempt": ["192.0.2.0/24"]}, cors_allowed_origins=("https://app.example.com",),
            cors_allow_credentials=True),
    }


def write_variant_files(tmp_path: Path) -> None:
    """The files :func:`config_variants` names: the descriptor set and the docs."""
    gw.write_descriptor_set(tmp_path / "sentinel.pb")
    openapi.write_docs(tmp_path / "docs")
    (tmp_path / "tls").mkdir(exist_ok=True)
    self_signed(tmp_path / "tls")


VARIANTS = sorted(config_variants(Path("variants")))


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _typed_config(cfg: dict[str, Any], filter_name: str) -> dict[str, Any]:
    return next(f["typed_config"] for f in _hcm(cfg)["http_filters"] if f["name"] == filter_name)


def test_variants_cover_the_optional_features(tmp_path: Path) -> None:
    variants = config_variants(tmp_path)
    assert any(c.cors_allowed_origins for c in variants.values())
    assert any(c.docs_dir for c in variants.values())
    assert any(c.jwks_uri.startswith("https://") for c in variants.values())
    assert any(c.tls_enabled for c in variants.values())
    assert any(c.rate_limits for c in variants.values())
    types = {c["type"] for v in variants.values() for c in gw.render(v)["static_resources"]["clusters"]}
    assert types == {"STATIC", "STRICT_DNS"}


# --------------------------------------------------------------------------- every variant


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_passes_strict_check(tmp_path: Path, name: str) -> None:
    schema.check(gw.render(config_variants(tmp_path)[name]))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_passes_envoy_validate(tmp_path: Path, name: str) -> None:
    envoy = envoy_binary()  # skips without the binary, fails under CI=true
    write_variant_files(tmp_path)
    conf = tmp_path / "envoy.yaml"
    conf.write_text(gw.render_yaml(config_variants(tmp_path)[name]))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(conf), "--disable-hot-restart",
                           "--log-level", "warn"], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"configuration '{conf}' OK" in out


def test_committed_dev_yaml_passes_strict_check() -> None:
    schema.check(yaml.safe_load(DEV_YAML.read_text()))


# --------------------------------------------------------------------------- the check can fail


def _broken(mutate: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(gw.render(gw.dev_config()))
    mutate(cfg)
    return cfg


def _jwt_provider(cfg: dict[str, Any]) -> dict[str, Any]:
    return _typed_config(cfg, "envoy.filters.http.jwt_authn")["providers"][gw.JWT_PROVIDER]  # type: ignore[no-any-return]


def _first_cluster(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["clusters"][0]  # type: ignore[no-any-return]


ROUTER_NOPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.NoSuchRouter"

BROKEN: dict[str, tuple[Any, tuple[str, ...]]] = {
    # mutation, then substrings the error must contain (the field path and what is wrong)
    "top_level_field": (lambda c: c.update(bogus_top=1),
                        ('Bootstrap: ', '"envoy.config.bootstrap.v3.Bootstrap" has no field named "bogus_top"')),
    "deep_in_hcm": (lambda c: _hcm(c)["common_http_protocol_options"].update(idle_timeot="1s"),
                    ("filters[0].typed_config.common_http_protocol_options: ", 'no field named "idle_timeot"')),
    "jwt_provider": (lambda c: _jwt_provider(c).update(forward_payload_headr="x"),
                     ("typed_config.providers[sentinel]: ", '"envoy.extensions.filters.http.jwt_authn.v3.JwtProvider"',
                      'no field named "forward_payload_headr"')),
    "enum": (lambda c: _first_cluster(c).update(lb_policy="NOT_A_POLICY"),
             ("Bootstrap.static_resources.clusters[0].lb_policy: ", "Invalid enum value NOT_A_POLICY")),
    "wrong_type": (lambda c: c["admin"]["address"]["socket_address"].update(port_value="ninety-nine-oh-one"),
                   ("Bootstrap.admin.address.socket_address.port_value: ", "'ninety-nine-oh-one'")),
    "unknown_type": (lambda c: _typed_config(c, "envoy.filters.http.router").update({"@type": ROUTER_NOPE}),
                     ("typed_config.http_filters[", f"].typed_config: unknown @type {ROUTER_NOPE}")),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_strict_check_names_the_bad_field(name: str) -> None:
    mutate, wanted = BROKEN[name]
    with pytest.raises(schema.SchemaError) as info:
        schema.check(_broken(mutate))
    for text in wanted:
        assert text in str(info.value), str(info.value)


def test_type_urls_are_found_everywhere() -> None:
    urls = {url.rpartition("/")[2] for _, url in schema.type_urls(gw.render(gw.dev_config()))}
    assert {"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",  # typed_extension_protocol_options
            "envoy.config.route.v3.FilterConfig"} <= urls  # typed_per_filter_config (a route inside the HCM)


# --------------------------------------------------------------------------- CLI


def test_cli_gateway_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(gw.render(gw.dev_config())))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_broken(lambda c: _first_cluster(c).update(lb_policy="NOT_A_POLICY"))))

    assert cli.main(["gateway", "check", str(DEV_YAML), str(good)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{DEV_YAML}: OK", f"{good}: OK"] and out.err == ""

    assert cli.main(["gateway", "check", str(good), str(bad), str(tmp_path / "missing.yaml")]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{good}: OK"]
    err = out.err.splitlines()
    assert err[0].startswith(f"{bad}: Bootstrap.static_resources.clusters[0].lb_policy: Invalid enum value"), err
    assert err[1].startswith(f"{tmp_path / 'missing.yaml'}: "), err
