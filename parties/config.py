"""The cluster config file: where the three parties listen and which certificates they use.

A config is TOML (``.toml``) or JSON (anything else), for example::

    frac_bits = 18
    timeout = 60.0            # seconds a party waits for a peer's message
    connect_timeout = 30.0    # seconds a party waits for its peers to come up
    insecure = false          # true only for local tests: plaintext, no authentication
    ca = "ca.pem"
    clients = ["client"]      # certificate common names allowed to run requests
    owners = ["owner"]        # names allowed to share and replace models (and run)
    upload_limit_per_client = 4294967296   # bytes of uploads one identity may have in flight
    upload_limit_per_party = 8589934592    # bytes of uploads all clients together may have

    [models.minilm]
    owners = ["alice"]        # only these may share or replace "minilm"

    [[parties]]
    address = "localhost:50051"
    cert = "party0.pem"
    key = "party0.key"
    # name = "party0"         # certificate common name; defaults to party<rank>

Model owners: a model named in a ``[models.NAME]`` table may be shared or replaced
only by the owners listed there; any other model only by the global ``owners``.
Whoever shares a model owns it: replacing it takes that same identity
(:mod:`veil.parties.authz`).  Upload limits count share bytes that have arrived and not
yet been consumed by a Run (:mod:`veil.parties.upload_limits`); the defaults let an owner
share the bundled models.

Relative paths are relative to the config file.  Every mistake a user can make
here is reported with the offending key, so a deployment fails at start-up,
not halfway through a handshake.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veil.mpc.communicator import WORLD_SIZE

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON configs only
    tomllib = None


DEFAULT_UPLOAD_LIMIT_PER_CLIENT = 4 << 30  # SmolLM2-135M's pairs are ~2.2 GB per party
DEFAULT_UPLOAD_LIMIT_PER_PARTY = 8 << 30


class ConfigError(ValueError):
    """The cluster config is invalid."""


@dataclass(frozen=True)
class PartySpec:
    rank: int
    host: str
    port: int
    name: str
    cert: Path | None = None
    key: Path | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    parties: tuple[PartySpec, ...]
    ca: Path | None = None
    clients: tuple[str, ...] = ("client",)
    owners: tuple[str, ...] = ()
    model_owners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    upload_limit_per_client: int = DEFAULT_UPLOAD_LIMIT_PER_CLIENT
    upload_limit_per_party: int = DEFAULT_UPLOAD_LIMIT_PER_PARTY
    insecure: bool = False
    frac_bits: int = 18
    timeout: float = 60.0
    connect_timeout: float = 30.0
    source: Path | None = field(default=None, compare=False)

    def party(self, rank: int) -> PartySpec:
        if not isinstance(rank, int) or rank not in range(len(self.parties)):
            raise ConfigError(f"unknown party rank {rank!r}: the cluster has ranks 0, 1, 2")
        return self.parties[rank]

    def rank_of(self, common_name: str) -> int | None:
        """The rank whose certificate carries ``common_name``, or None."""
        for spec in self.parties:
            if spec.name == common_name:
                return spec.rank
        return None

    def with_addresses(self, addresses: list[str]) -> ClusterConfig:
        """A copy listening on other addresses (e.g. ports chosen by the OS)."""
        parties = tuple(
            replace(spec, **dict(zip(("host", "port"), parse_address(addr, f"parties[{i}]"))))
            for i, (spec, addr) in enumerate(zip(self.parties, addresses, strict=True))
        )
        return replace(self, parties=parties)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :func:`config_from_dict` reads back (absolute paths)."""
        return {
            "insecure": self.insecure,
            "frac_bits": self.frac_bits,
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "ca": str(self.ca) if self.ca else None,
            "clients": list(self.clients),
            "owners": list(self.owners),
            "models": {name: {"owners": list(o)} for name, o in self.model_owners.items()},
            "upload_limit_per_client": self.upload_limit_per_client,
            "upload_limit_per_party": self.upload_limit_per_party,
            "parties": [
                {
                    "address": spec.address,
                    "name": spec.name,
                    "cert": str(spec.cert) if spec.cert else None,
                    "key": str(spec.key) if spec.key else None,
                }
                for spec in self.parties
            ],
        }


def load_config(path: str | Path, *, insecure: bool | None = None) -> ClusterConfig:
    """Read and validate a cluster config file; ``insecure`` overrides its flag (``--insecure``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster config {path}: {exc.strerror}") from None
    if path.suffix == ".toml" and tomllib is None:
        raise ConfigError(f"{path}: TOML configs need Python 3.11+; use a JSON config")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if insecure is not None and isinstance(raw, dict):
        raw = {**raw, "insecure": insecure}
    return config_from_dict(raw, base_dir=path.parent, source=path)


def config_from_dict(
    raw: dict[str, Any], base_dir: str | Path = ".", source: Path | None = None
) -> ClusterConfig:
    """Validate a parsed config; relative file paths are resolved against ``base_dir``."""
    where = f"{source}: " if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}a cluster config must be a table/object at the top level")
    base = Path(base_dir)
    known = {
        "parties",
        "ca",
        "clients",
        "owners",
        "models",
        "upload_limit_per_client",
        "upload_limit_per_party",
        "insecure",
        "frac_bits",
        "timeout",
        "connect_timeout",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{where}unknown keys {sorted(unknown)}; expected some of {sorted(known)}"
        )
    insecure = _typed(raw, "insecure", bool, False, where)
    entries = raw.get("parties")
    if not isinstance(entries, list) or len(entries) != WORLD_SIZE:
        raise ConfigError(f"{where}'parties' must list exactly {WORLD_SIZE} parties")
    parties = tuple(_party(i, entry, base, insecure, where) for i, entry in enumerate(entries))
    names = [spec.name for spec in parties]
    if len(set(names)) != WORLD_SIZE:
        raise ConfigError(f"{where}party names must be distinct, got {names}")
    clients = _identities(raw, "clients", ["client"], names, where)
    owners = _identities(raw, "owners", [], names, where)
    model_owners = _model_owners(raw.get("models", {}), names, where)
    ca = None if insecure else _existing_file(raw.get("ca"), base, "ca", where)
    config = ClusterConfig(
        parties=parties,
        ca=ca,
        clients=clients,
        owners=owners,
        model_owners=model_owners,
        upload_limit_per_client=_typed(
            raw, "upload_limit_per_client", int, DEFAULT_UPLOAD_LIMIT_PER_CLIENT, where
        ),
        upload_limit_per_party=_typed(
            raw, "upload_limit_per_party", int, DEFAULT_UPLOAD_LIMIT_PER_PARTY, where
        ),
        insecure=insecure,
        frac_bits=_typed(raw, "frac_bits", int, 18, where),
        timeout=float(_typed(raw, "timeout", (int, float), 60.0, where)),
        connect_timeout=float(_typed(raw, "connect_timeout", (int, float), 30.0, where)),
        source=source,
    )
    if not 0 < config.frac_bits < 63:
        raise ConfigError(f"{where}frac_bits must be in 1..62, got {config.frac_bits}")
    if config.timeout <= 0 or config.connect_timeout <= 0:
        raise ConfigError(f"{where}timeouts must be positive")
    if config.upload_limit_per_client <= 0 or config.upload_limit_per_party <= 0:
        raise ConfigError(f"{where}upload limits must be positive numbers of bytes")
    return config


def parse_address(address: Any, where: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); port 0 means 'any free port'."""
    if not isinstance(address, str) or ":" not in address:
        raise ConfigError(f"{where}: address {address!r} is not host:port")
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} in {address!r} is not an IPv6 address") from None
    elif not host or ":" in host or any(c.isspace() for c in host):
        raise ConfigError(f"{where}: address {address!r} is not host:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: port {port_text!r} in {address!r} is not in 0..65535")
    return host, int(port_text)


def _party(rank: int, entry: Any, base: Path, insecure: bool, where: str) -> PartySpec:
    label = f"{where}parties[{rank}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{label} must be a table with 'address', 'cert' and 'key'")
    unknown = set(entry) - {"address", "name", "cert", "key"}
    if unknown:
        raise ConfigError(f"{label}: unknown keys {sorted(unknown)}")
    host, port = parse_address(entry.get("address"), label)
    name = entry.get("name", f"party{rank}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{label}: name must be a non-empty string")
    cert = key = None
    if not insecure:
        cert = _existing_file(entry.get("cert"), base, f"parties[{rank}].cert", where)
        key = _existing_file(entry.get("key"), base, f"parties[{rank}].key", where)
    return PartySpec(rank=rank, host=host, port=port, name=name, cert=cert, key=key)


def _identities(
    raw: dict[str, Any], key: str, default: list[str], party_names: list[str], where: str
) -> tuple[str, ...]:
    """Certificate names of clients or owners: non-empty strings, none of them a party's."""
    value = raw.get(key, default)
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(n, str) and n for n in value)
        or set(value) & set(party_names)
    ):
        raise ConfigError(f"{where}'{key}' must list names distinct from the parties' names")
    return tuple(value)


def _model_owners(models: Any, party_names: list[str], where: str) -> dict[str, tuple[str, ...]]:
    """``[models.NAME] owners = [...]`` tables: who may share or replace NAME."""
    if not isinstance(models, dict):
        raise ConfigError(f"{where}'models' must be a table of [models.NAME] tables")
    owners = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or set(entry) != {"owners"}:
            raise ConfigError(f"{where}[models.{name}] must have exactly one key, 'owners'")
        owners[name] = _identities(entry, "owners", [], party_names, f"{where}[models.{name}] ")
    return owners


def _existing_file(value: Any, base: Path, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}'{key}' is required unless insecure = true")
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}'{key}': certificate file {path} does not exist")
    return path


def _typed(raw: dict[str, Any], key: str, kind: Any, default: Any, where: str) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}'{key}' has the wrong type: {value!r}")
    return value
