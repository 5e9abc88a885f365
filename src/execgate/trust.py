"""The trust store: which authorities, attesters and mesh nodes this gateway believes.

``trust.toml`` lists each trusted root authority with its public keys and the scope it
may grant ("policy authority ancestry"), each environment attester, and each other
gateway of the mesh whose decision receipts may be presented as parent executions. Key ids are
always the RFC 7638 thumbprint of the key, computed here, never taken from the file; a
key may belong to only one principal.

    [[authority]]
    id = "example-authority"
    keys = [{kty = "OKP", crv = "Ed25519", x = "…"}]
    scope = [{action = "payments.*", resource = "acct:**", constraints = {amount = {max = 500}}}]

    [[attester]]
    id = "example-attester"
    keys = [{kty = "OKP", crv = "Ed25519", x = "…"}]

    [[mesh_node]]
    id = "gw-b"
    keys = [{kty = "OKP", crv = "Ed25519", x = "…"}]

    [[approver]]
    id = "alice"
    groups = ["finance"]
    keys = [{kty = "OKP", crv = "Ed25519", x = "…"}]

    [[admin]]
    id = "ops"
    roles = ["revoke", "approvals", "reload", "audit"]
    keys = [{kty = "OKP", crv = "Ed25519", x = "…"}]

An ``[[admin]]`` may call the admin HTTP routes its ``roles`` name (``ADMIN_ROLES``; see
``execgate.admin``): a fixed set, so a misspelt role is a configuration error rather than
a role nobody can use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from execgate.errors import ConfigError, JoseError
from execgate.home import ID_PATTERN, ID_RULE, read_toml
from execgate.jose import PublicKey
from execgate.scope import Grant, parse_grants

__all__ = [
    "ADMIN_ROLES",
    "Admin",
    "Approver",
    "Attester",
    "Authority",
    "MeshNode",
    "TrustStore",
    "signer_refusal",
]


def signer_refusal(exc: JoseError, *, what: str, signer: str) -> str:
    """Why a ``what`` (a token, a review) that must be signed by a ``signer`` key pinned in
    the trust store was refused, from the codec's failure."""
    return {
        "unknown_key": f"the {what} is signed by a key that is no {signer}'s in the trust store",
        "signature_invalid": f"the {what}'s signature does not verify",
        "malformed": f"the {what} is malformed: {exc.detail}",
    }[exc.kind]


_JWK_MEMBERS: Final = frozenset({"kty", "crv", "x", "kid", "alg", "use"})
_SECTIONS = frozenset({"authority", "attester", "mesh_node", "approver", "admin"})
# What an admin may be allowed to do, one role per group of admin routes.
ADMIN_ROLES = frozenset({"revoke", "approvals", "reload", "audit"})


@dataclass(frozen=True, slots=True)
class Authority:
    id: str
    keys: Mapping[str, PublicKey]
    scope: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Attester:
    id: str
    keys: Mapping[str, PublicKey]


def _keys(where: str, obj: object) -> dict[str, PublicKey]:
    if not isinstance(obj, list) or not obj:
        raise ConfigError(f"{where}: 'keys' must be a non-empty list of public JWKs")
    keys = {}
    for i, jwk in enumerate(obj):
        if not isinstance(jwk, Mapping):
            raise ConfigError(f"{where}: keys[{i}] must be a JWK table")
        if "d" in jwk:
            raise ConfigError(
                f"{where}: keys[{i}] holds PRIVATE key material ('d'); list only the public"
                " key (kty, crv, x), and treat the private key as exposed: rotate it"
            )
        try:
            key = PublicKey.from_jwk(jwk)
        except JoseError as exc:
            raise ConfigError(
                f"{where}: keys[{i}] is not an Ed25519 public JWK: {exc.detail}"
            ) from exc
        unknown = sorted(set(jwk) - _JWK_MEMBERS)
        if unknown:
            raise ConfigError(
                f"{where}: keys[{i}] has unknown members {unknown}; a public JWK here holds"
                f" {', '.join(sorted(_JWK_MEMBERS))}"
            )
        if "kid" in jwk and jwk["kid"] != key.thumbprint():
            raise ConfigError(
                f"{where}: keys[{i}] has a kid that is not the key's RFC 7638 thumbprint"
                f" ({key.thumbprint()}); correct it or leave it out"
            )
        if key.thumbprint() in keys:
            raise ConfigError(f"{where}: keys[{i}] lists the same key twice")
        keys[key.thumbprint()] = key
    return keys


def _tables(doc: Mapping[str, Any], section: str, source: str) -> list[object]:
    """``[[section]]`` entries; a single ``[section]`` table or a scalar is refused."""
    entries = doc.get(section, [])
    if not isinstance(entries, list):
        raise ConfigError(
            f"{source}: '{section}' must be an array of tables: write each entry under"
            f" [[{section}]] (double brackets)"
        )
    return entries


def _check_entry(where: str, entry: object, fields: tuple[str, ...]) -> None:
    expected = ", ".join(fields)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table with {expected}")
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected {expected}")


def _entry_id(where: str, entry: Mapping[str, Any]) -> str:
    # Ids and group names are what a log line, a review and an exclusion compare as text,
    # so nothing that looks like another ('alice\u200b', ' finance', a control character):
    # the rule of gateway ids.
    ident = entry.get("id")
    if not isinstance(ident, str) or not ID_PATTERN.fullmatch(ident):
        raise ConfigError(f"{where}: 'id' must be {ID_RULE}")
    return ident


def _names(where: str, entry: Mapping[str, Any], key: str, what: str) -> list[str]:
    """``entry[key]`` when it is a non-empty list of non-empty strings (approver groups,
    admin roles), else ``ConfigError``."""
    names = entry.get(key)
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and ID_PATTERN.fullmatch(n) for n in names)
    ):
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of {what}, each {ID_RULE}")
    return names


def _entries(
    doc: Mapping[str, Any], section: str, fields: tuple[str, ...], source: str
) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """Each ``[[section]]`` table as (where, id, table): checked for its fields and for an
    id no earlier table of the section has."""
    seen: dict[str, str] = {}
    for i, entry in enumerate(_tables(doc, section, source)):
        where = f"{source}: {section}[{i}]"
        _check_entry(where, entry, fields)
        assert isinstance(entry, Mapping)
        ident = _entry_id(where, entry)
        # 'ANA' and 'ana' are one person to whoever reads a review or the log: two ids
        # would count twice toward a quorum.
        earlier = seen.get(ident.casefold())
        if earlier is not None:
            same = (
                ""
                if earlier == ident
                else f" (after {earlier!r}: ids must differ in more than case)"
            )
            raise ConfigError(f"{where}: duplicate {section.replace('_', ' ')} id {ident!r}{same}")
        seen[ident.casefold()] = ident
        yield where, ident, entry


@dataclass(frozen=True, slots=True)
class MeshNode:
    """Another gateway whose receipts this one accepts as parent executions."""

    id: str
    keys: Mapping[str, PublicKey]


@dataclass(frozen=True, slots=True)
class Approver:
    """A person or service that may review paused requests for the groups it is in."""

    id: str
    groups: tuple[str, ...]
    keys: Mapping[str, PublicKey]


@dataclass(frozen=True, slots=True)
class Admin:
    """A person or service that may call the admin routes its ``roles`` name."""

    id: str
    roles: frozenset[str]
    keys: Mapping[str, PublicKey]


class TrustStore:
    """Immutable view of the trusted principals, indexed by key id."""

    __slots__ = (
        "_admin_kids",
        "_approver_kids",
        "_attester_kids",
        "_authority_kids",
        "_holders",
        "_mesh_kids",
        "admin_keys",
        "admins",
        "approver_keys",
        "approvers",
        "attester_keys",
        "attesters",
        "authorities",
        "authority_keys",
        "mesh_keys",
        "mesh_nodes",
    )

    def __init__(
        self,
        authorities: Mapping[str, Authority],
        attesters: Mapping[str, Attester],
        mesh_nodes: Mapping[str, MeshNode] | None = None,
        approvers: Mapping[str, Approver] | None = None,
        admins: Mapping[str, Admin] | None = None,
    ):
        mesh_nodes = mesh_nodes or {}
        approvers = approvers or {}
        admins = admins or {}
        seen: dict[str, str] = {}
        # An admin key is never also an approver's: an approval over HTTP needs both.
        sections = (
            ("authority", authorities),
            ("attester", attesters),
            ("mesh_node", mesh_nodes),
            ("approver", approvers),
            ("admin", admins),
        )
        for section, group in sections:
            folded: dict[str, str] = {}
            for principal in group.values():
                other = folded.setdefault(principal.id.casefold(), principal.id)
                if other != principal.id:
                    raise ConfigError(
                        f"{section} ids {other!r} and {principal.id!r} differ only in case;"
                        " give each an id that differs in more than case"
                    )
            for principal in group.values():
                for kid, key in principal.keys.items():
                    # Revocations, receipts and the log name a key by its thumbprint:
                    # another id would let one key hide under two names.
                    if kid != key.thumbprint():
                        raise ConfigError(
                            f"{section} {principal.id!r} lists a key under the id {kid!r},"
                            f" not its RFC 7638 thumbprint {key.thumbprint()}: list each"
                            " key under its thumbprint"
                        )
                    if kid in seen:
                        raise ConfigError(
                            f"key {kid} is listed for both {seen[kid]} and {section}"
                            f" {principal.id!r}; a key may belong to one principal only:"
                            " give each its own"
                        )
                    seen[kid] = f"{section} {principal.id!r}"
        self._holders = seen
        self.authorities = dict(authorities)
        self.attesters = dict(attesters)
        self._authority_kids = {k: a for a in authorities.values() for k in a.keys}
        self._attester_kids = {k: a for a in attesters.values() for k in a.keys}
        # The pinned key sets handed to the JWS codec, built once.
        self.authority_keys = {k: a.keys[k] for k, a in self._authority_kids.items()}
        self.attester_keys = {k: a.keys[k] for k, a in self._attester_kids.items()}
        self.mesh_nodes = dict(mesh_nodes)
        self._mesh_kids = {k: n for n in mesh_nodes.values() for k in n.keys}
        self.mesh_keys = {k: n.keys[k] for k, n in self._mesh_kids.items()}
        self.approvers = dict(approvers)
        self._approver_kids = {k: a for a in approvers.values() for k in a.keys}
        self.approver_keys = {k: a.keys[k] for k, a in self._approver_kids.items()}
        self.admins = dict(admins)
        self._admin_kids = {k: a for a in admins.values() for k in a.keys}
        self.admin_keys = {k: a.keys[k] for k, a in self._admin_kids.items()}

    def holder_of(self, kid: str) -> str | None:
        """Which entry lists the key ``kid`` (``"authority 'x'"``), if any does."""
        return self._holders.get(kid)

    def authority_for_kid(self, kid: str) -> Authority | None:
        return self._authority_kids.get(kid)

    def attester_for_kid(self, kid: str) -> Attester | None:
        return self._attester_kids.get(kid)

    def mesh_node_for_kid(self, kid: str) -> MeshNode | None:
        return self._mesh_kids.get(kid)

    def approver_for_kid(self, kid: str) -> Approver | None:
        return self._approver_kids.get(kid)

    def admin_for_kid(self, kid: str) -> Admin | None:
        return self._admin_kids.get(kid)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "trust store") -> TrustStore:
        unknown = set(doc) - _SECTIONS
        if unknown:
            raise ConfigError(
                f"{source}: unknown sections {sorted(unknown)}; expected {sorted(_SECTIONS)}"
            )
        authorities: dict[str, Authority] = {}
        for where, ident, entry in _entries(doc, "authority", ("id", "keys", "scope"), source):
            try:
                scope = parse_grants(entry.get("scope"))
            except ValueError as exc:
                raise ConfigError(f"{where}: scope: {exc}") from exc
            authorities[ident] = Authority(ident, _keys(where, entry.get("keys")), scope)
        attesters = {
            ident: Attester(ident, _keys(where, entry.get("keys")))
            for where, ident, entry in _entries(doc, "attester", ("id", "keys"), source)
        }
        mesh = {
            ident: MeshNode(ident, _keys(where, entry.get("keys")))
            for where, ident, entry in _entries(doc, "mesh_node", ("id", "keys"), source)
        }
        approvers: dict[str, Approver] = {}
        for where, ident, entry in _entries(doc, "approver", ("id", "groups", "keys"), source):
            groups = _names(where, entry, "groups", "group names")
            approvers[ident] = Approver(ident, tuple(groups), _keys(where, entry.get("keys")))
        admins: dict[str, Admin] = {}
        for where, ident, entry in _entries(doc, "admin", ("id", "roles", "keys"), source):
            roles = _names(where, entry, "roles", "role names")
            unknown_roles = sorted(set(roles) - ADMIN_ROLES)
            if unknown_roles:
                expected = sorted(ADMIN_ROLES)
                raise ConfigError(
                    f"{where}: unknown roles {unknown_roles}; expected some of {expected}"
                )
            admins[ident] = Admin(ident, frozenset(roles), _keys(where, entry.get("keys")))
        if not authorities:
            raise ConfigError(
                f"{source}: no [[authority]] is trusted; nothing could ever be authorized"
            )
        try:
            return cls(authorities, attesters, mesh, approvers, admins)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: Path, *, data: bytes | None = None) -> TrustStore:
        """The trust store at ``path`` (or in ``data``, its bytes as read before)."""
        try:
            doc = read_toml(path, name=f"trust store {path}", what="trust store", data=data)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"trust store {path} does not exist; restore it, or create a new home"
                " with 'execgate init'"
            ) from exc
        return cls.from_dict(doc, source=str(path))
