"""The supervisor's side of the broker's rights: what the broker knows at start, and every change after.

At start the broker reads every usable identity from its dynamic-security file (`BrokerAccess`);
afterwards the supervisor changes them over `$CONTROL` only: device identities are admitted before a
simulator connects with them (scale, rotation) and deleted when their generation is revoked, which
closes any connection still open on them; `tail` borrows a read-only identity of its own for as long
as it watches.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterable, Mapping

from factory_core.errors import UsageError
from local_stack.broker_setup import ServiceCertificates, service_certificates
from local_stack.control import ObserverGrant, ObserverReturned
from local_stack.dynamic_security import OBSERVERS_GROUP, BrokerAccess, DynsecAdmin
from local_stack.identities import OBSERVER_PREFIX
from local_stack.paths import StatePaths
from local_stack.ports import HOST
from local_stack.rotation import DevicePki

_BORROWED_OBSERVER = re.compile(rf"^{OBSERVER_PREFIX}[0-9a-f]{{8}}$")


class BrokerRights:
    """Who may do what on the running broker; every change goes through the plugin's administrator."""

    def __init__(
        self, pki: DevicePki, certificates: ServiceCertificates, paths: StatePaths, publish_prefix: str = ""
    ) -> None:
        self.pki = pki
        self.publish_prefix = publish_prefix
        self.certificates = certificates
        self.observers_dir = paths.certs_dir / "observers"
        self._admin: DynsecAdmin | None = None
        self._port = 0

    @classmethod
    def prepare(
        cls, pki: DevicePki, paths: StatePaths, site_indexes: Iterable[int], publish_prefix: str = ""
    ) -> BrokerRights:
        """Before the broker starts: the service certificates, and the device certificates of the
        sites about to run (so the broker's rights file admits them from its first second)."""
        for index in site_indexes:
            pki.device(index)
        rights = cls(pki, service_certificates(pki.ca, paths.certs_dir), paths, publish_prefix)
        rights.forget_observers()
        return rights

    def access(self) -> BrokerAccess:
        """What the broker's file says at start: every device certificate that is not revoked."""
        return BrokerAccess(devices=self.pki.usable_identities(), publish_prefix=self.publish_prefix)

    def broker_started(self, port: int) -> None:
        """The broker listens on `port`: runtime changes go there from now on."""
        admin = self.certificates.admin
        self._port = port
        self._admin = DynsecAdmin(HOST, port, self.pki.ca.ca_cert_path, admin.cert_path, admin.key_path)

    def _administrator(self) -> DynsecAdmin:
        if self._admin is None:
            raise UsageError("the broker is not running; start the stack: `python cli.py up --stack local`")
        return self._admin

    def admit(self, identities: Mapping[str, str]) -> None:
        """Device CNs (-> site) the broker must know before a simulator connects with them."""
        if self._admin is not None and identities:
            self._admin.admit(identities)

    def admit_site(self, index: int, generation: str) -> None:
        """Every connection's identity of one site in one generation (issued now if need be)."""
        credentials = self.pki.device(index, generation)
        self.admit(dict.fromkeys(credentials.client_ids, credentials.site))

    def cut(self, identities: Iterable[str]) -> None:
        """Delete identities from the broker: a connection still open on one of them is closed now."""
        names = list(identities)
        if self._admin is not None and names:
            self._admin.remove(names)

    def lend_observer(self) -> ObserverGrant:
        """A read-only identity of its own for one `tail` (two sharing one CN would close each other)."""
        administrator = self._administrator()
        name = f"{OBSERVER_PREFIX}{secrets.token_hex(4)}"
        certificate = self.pki.ca.issue_client(name, self.observers_dir)
        administrator.create_clients({name: OBSERVERS_GROUP})
        return ObserverGrant(
            identity=name,
            cert=str(certificate.cert_path),
            key=str(certificate.key_path),
            ca=str(self.pki.ca.ca_cert_path),
            host=HOST,
            port=self._port,
            topic_prefix=self.publish_prefix,
        )

    def return_observer(self, name: str) -> ObserverReturned:
        """`tail` is done: the identity is deleted from the broker and its files removed."""
        if not _BORROWED_OBSERVER.match(name):
            raise UsageError(f"{name!r} is not an identity lent to `tail` ({OBSERVER_PREFIX}<8 hex digits>)")
        self._administrator().remove([name])
        for suffix in (".pem", ".key"):
            (self.observers_dir / f"{name}{suffix}").unlink(missing_ok=True)
        return ObserverReturned(identity=name)

    def forget_observers(self) -> None:
        """At start: identities lent before are not in the broker's new file; their files go too."""
        shutil.rmtree(self.observers_dir, ignore_errors=True)
