"""Cluster config validation and certificate generation."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from veil.parties.certs import common_name, write_cluster_certs
from veil.parties.config import ConfigError, config_from_dict, load_config, parse_address


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    write_cluster_certs(directory, hosts=("party1.example.org", "10.0.0.7"))
    return directory


def raw_config(**overrides) -> dict:
    raw = {
        "ca": "ca.pem",
        "parties": [
            {"address": f"localhost:{50051 + i}", "cert": f"party{i}.pem", "key": f"party{i}.key"}
            for i in range(3)
        ],
    }
    raw.update(overrides)
    return raw


def test_toml_and_json_configs_agree(cert_dir) -> None:
    from veil.parties.certs import cluster_config_toml

    names = ("party0", "party1", "party2")
    toml_path = cert_dir / "cluster.toml"
    toml_path.write_text(
        cluster_config_toml(
            names, ("localhost:50051", "localhost:50052", "[::1]:50053"), ("client",)
        )
    )
    config = load_config(toml_path)
    json_path = cert_dir / "cluster.json"
    json_path.write_text(json.dumps(config.to_dict()))
    assert load_config(json_path) == config
    assert config.party(2).host == "::1" and config.party(2).address == "[::1]:50053"
    assert config.rank_of("party1") == 1 and config.rank_of("client") is None
    assert config.party(0).cert == cert_dir / "party0.pem"


def test_unknown_rank(cert_dir) -> None:
    config = config_from_dict(raw_config(), cert_dir)
    with pytest.raises(ConfigError, match="unknown party rank 3"):
        config.party(3)


def test_missing_cert_file(cert_dir) -> None:
    raw = raw_config()
    raw["parties"][1]["key"] = "nope.key"
    with pytest.raises(ConfigError, match=r"parties\[1\].key.*nope.key does not exist"):
        config_from_dict(raw, cert_dir)
    with pytest.raises(ConfigError, match="'ca' is required"):
        config_from_dict(raw_config(ca=None), cert_dir)


def test_insecure_needs_no_certs(tmp_path) -> None:
    config = config_from_dict({"insecure": True, "parties": [{"address": "h:1"}] * 3}, tmp_path)
    assert config.insecure and config.ca is None


@pytest.mark.parametrize(
    "address, message",
    [
        ("localhost", "not host:port"),
        ("localhost:", "port"),
        ("localhost:70000", "port"),
        (":50051", "not host:port"),
        ("[zz]:1", "not an IPv6 address"),
        (5, "not host:port"),
    ],
)
def test_bad_addresses(address, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_address(address, "parties[0]")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"parties": []}, "exactly 3"),
        ({"frac_bits": 70}, "frac_bits"),
        ({"timeout": "soon"}, "wrong type"),
        ({"colour": "blue"}, "unknown keys"),
        ({"clients": ["party0"]}, "clients"),
    ],
)
def test_invalid_configs(cert_dir, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw_config(**overrides), cert_dir)


def test_unreadable_or_broken_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("parties = [")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(tmp_path / "bad.toml")


def test_certificates(cert_dir) -> None:
    ca = x509.load_pem_x509_certificate((cert_dir / "ca.pem").read_bytes())
    for name in ("party0", "party1", "party2", "client"):
        cert = x509.load_pem_x509_certificate((cert_dir / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert common_name(cert.public_bytes(encoding=_pem())) == name
        assert stat.S_IMODE((cert_dir / f"{name}.key").stat().st_mode) == 0o600
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    party = x509.load_pem_x509_certificate((cert_dir / "party1.pem").read_bytes())
    sans = party.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "party1.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.7"} <= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM
