"""Device certificates of the local stack by generation, and `rotate-certs` with the cloud's step semantics.

Every simulator connection has its own certificate (CN = its client id, `identities.device_identity`),
issued for the connections the connection planner gives the site; the broker lets each
certificate act only as that one client id.

The steps, their order and their resume/rollback rules come from `factory_core.cert_rotation` (pure,
shared with dev/prod). Here each step is applied to local things:

- add        — issue the new generation for every site, make the broker know the new identities,
               then move each running simulator onto them, one at a time (drain, restart with its
               checkpoint so `seq` continues);
- deactivate — put the old generation's serials on the CRL, make the broker reload it (new
               connections refused), then delete the old identities from the broker, which closes
               any connection still open on them;
- remove     — delete the old generation's certificate and key files;
- rollback   — take the old serials off the CRL, move the simulators back, revoke and delete the new.

`pki.json` in the state folder records the generations, each connection's certificate per
generation and the rotation record, written before and after every step, so an interrupted
rotation resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from factory_core import cert_rotation
from factory_core.cert_rotation import ActionKind, Generation, RotationError, RotationRecord
from factory_core.connection_plan import plan_connections
from factory_core.errors import UsageError
from factory_core.fleet import FleetSettings, site_id
from local_stack.certificate_authority import CertificateAuthority
from local_stack.identities import device_prefix
from local_stack.paths import StatePaths

Progress = Callable[[str], None]
# pki.json before one certificate per connection: one per site, CN = site id.
_LEGACY_DEVICES = "devices"
_CONNECTIONS = "connections"


@dataclass(frozen=True)
class SiteCredentials:
    """One site's certificates in one generation: `<client id>.pem`/`.key` in `cert_dir` per connection."""

    site: str
    generation: str
    cert_dir: Path
    client_ids: tuple[str, ...]  # = the certificates' CNs
    serials: tuple[int, ...]


class DevicePki:
    """The stack's CA plus `pki.json`: which certificate each connection has in each generation."""

    def __init__(
        self, paths: StatePaths, ca: CertificateAuthority, fleet: FleetSettings | None = None
    ) -> None:
        self.paths = paths
        self.ca = ca
        self.fleet = fleet or FleetSettings()
        self._document = self._read()
        revoked = self._retire_legacy()
        # For the supervisor's events: once, on the `up` that upgraded pki.json.
        self.legacy_notice = (
            f"revoked {revoked} device certificate(s) of an older layout (one per site); every"
            " simulator connection now has a certificate of its own"
            if revoked
            else None
        )

    @classmethod
    def open(cls, paths: StatePaths, fleet: FleetSettings | None = None) -> DevicePki:
        return cls(paths, CertificateAuthority.load_or_create(paths.ca_dir), fleet)

    def _read(self) -> dict[str, Any]:
        if self.paths.pki_file.exists():
            return dict(json.loads(self.paths.pki_file.read_text()))
        return {
            "generations": cert_rotation.dump_generations(cert_rotation.initial_generations()),
            "rotation": None,
            _CONNECTIONS: {},
        }

    def _retire_legacy(self) -> int:
        """Revoke the one-per-site certificates of older stacks (they could act as any client id)."""
        legacy = self._document.pop(_LEGACY_DEVICES, None)
        self._document.setdefault(_CONNECTIONS, {})
        if not legacy:
            return 0
        serials = [int(entry["serial"]) for sites in legacy.values() for entry in sites.values()]
        if serials:
            self.ca.revoke(*serials)
        for generation in legacy:
            for entry in legacy[generation].values():
                for name in ("cert", "key"):
                    Path(entry[name]).unlink(missing_ok=True)
        self.save()
        return len(serials)

    def save(self) -> None:
        temporary = self.paths.pki_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._document, indent=2, sort_keys=True))
        temporary.replace(self.paths.pki_file)

    @property
    def generations(self) -> tuple[Generation, ...]:
        return cert_rotation.parse_generations(self._document["generations"])

    @generations.setter
    def generations(self, value: Iterable[Generation]) -> None:
        self._document["generations"] = cert_rotation.dump_generations(list(value))

    @property
    def record(self) -> RotationRecord | None:
        return cert_rotation.parse_record(self._document.get("rotation"))

    @record.setter
    def record(self, value: RotationRecord | None) -> None:
        self._document["rotation"] = cert_rotation.dump_record(value) if value else None

    @property
    def current_generation(self) -> str:
        return cert_rotation.current_generation(self.generations).name

    def site_dir(self, index: int, generation: str) -> Path:
        return self.paths.certs_dir / generation / site_id(index)

    def device(self, index: int, generation: str | None = None) -> SiteCredentials:
        """The site's certificates in `generation` (default: the current one), issued on first use.

        One per connection the planner gives the site, named as the planner names the connection
        when the client-id prefix is the generation's (`g2-site-00-c01`).
        """
        generation = generation or self.current_generation
        site = site_id(index)
        entries = self._document[_CONNECTIONS].setdefault(generation, {})
        client_ids = plan_connections(self.fleet, index, device_prefix(generation)).client_ids
        folder = self.site_dir(index, generation)
        issued = False
        for client_id in client_ids:
            entry = entries.get(client_id)
            if entry is not None and Path(entry["cert"]).exists() and Path(entry["key"]).exists():
                continue
            certificate = self.ca.issue_client(client_id, folder)
            entries[client_id] = {
                "site": site,
                "serial": str(certificate.serial),
                "cert": str(certificate.cert_path),
                "key": str(certificate.key_path),
            }
            issued = True
        if issued:
            self.save()
        serials = tuple(int(entries[client_id]["serial"]) for client_id in client_ids)
        return SiteCredentials(site, generation, folder, client_ids, serials)

    def identities(self, generation: str) -> dict[str, str]:
        """CN -> site of every certificate issued in `generation`."""
        entries = self._document[_CONNECTIONS].get(generation, {})
        return {cn: str(entry["site"]) for cn, entry in entries.items()}

    def usable_identities(self) -> dict[str, str]:
        """CN -> site of every device certificate that is not revoked: what the broker admits."""
        revoked = self.ca.revoked_serials()
        return {
            cn: str(entry["site"])
            for entries in self._document[_CONNECTIONS].values()
            for cn, entry in entries.items()
            if int(entry["serial"]) not in revoked
        }

    def serials(self, generation: str) -> list[int]:
        return [int(entry["serial"]) for entry in self._document[_CONNECTIONS].get(generation, {}).values()]

    def revoke_generation(self, generation: str) -> int:
        serials = self.serials(generation)
        if serials:
            self.ca.revoke(*serials)
        return len(serials)

    def reinstate_generation(self, generation: str) -> int:
        """Take a generation's serials off the CRL again (AWS IoT: set the certificates ACTIVE)."""
        wanted = set(self.serials(generation))
        revoked = self.ca.revoked_serials()
        if not wanted & revoked:
            return 0
        self.ca.unrevoke(*wanted)
        return len(wanted & revoked)

    def remove_generation(self, generation: str) -> None:
        shutil.rmtree(self.paths.certs_dir / generation, ignore_errors=True)
        self._document[_CONNECTIONS].pop(generation, None)
        self.save()


class RotationRuntime(Protocol):
    """What a rotation needs from the running stack (the supervisor); a stopped stack does nothing."""

    def roll_simulators(self, generation: str, progress: Progress) -> None:
        """Move every running simulator whose certificate is of another generation onto `generation`."""
        ...

    def reload_broker(self) -> None: ...

    def admit(self, identities: dict[str, str]) -> None:
        """Make the broker know these device identities (CN -> site) before anyone connects with them."""
        ...

    def cut_sessions(self, identities: Iterable[str]) -> None:
        """Make the broker forget these identities: a connection still open on one is closed at once."""
        ...

    def site_indexes(self) -> list[int]:
        """Sites that need a certificate: every simulator the stack runs or will run."""
        ...


class StoppedStack:
    """Rotation on a stack that is not running: certificates and CRL only; the next `up` uses them."""

    def __init__(self, simulator_count: int) -> None:
        self._count = simulator_count

    def roll_simulators(self, generation: str, progress: Progress) -> None:
        return None

    def reload_broker(self) -> None:
        return None

    def admit(self, identities: dict[str, str]) -> None:
        return None  # the next `up` writes every usable identity into the broker's rights

    def cut_sessions(self, identities: Iterable[str]) -> None:
        return None

    def site_indexes(self) -> list[int]:
        return list(range(self._count))


@dataclass(frozen=True)
class RotationResult:
    from_generation: str
    to_generation: str
    rolled_back: bool
    finished: bool
    steps: tuple[str, ...]


def rotate(
    pki: DevicePki,
    runtime: RotationRuntime,
    progress: Progress,
    *,
    rollback: bool = False,
    stop_after: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> RotationResult:
    """Run the rotation (or its rollback) to the end, step by step, recording each step.

    `stop_after` ends the run after the named step as if interrupted (tests of resume/rollback);
    `should_stop` is polled between steps so a stack shutting down leaves a resumable record.
    """
    steps: list[str] = []
    while True:
        try:
            action = (
                cert_rotation.rollback_action(pki.generations, pki.record)
                if rollback
                else cert_rotation.next_action(pki.generations, pki.record)
            )
        except RotationError as error:
            raise UsageError(str(error)) from None
        # FINISH carries no record (it deletes it): name the rotation from the one on file.
        record = action.record_before or action.record_after or pki.record
        assert record is not None
        progress(action.describe())
        pki.generations = action.generations
        pki.record = action.record_before
        pki.save()
        if action.apply:
            _apply(action.kind, record, pki, runtime, progress)
        pki.record = action.record_after
        pki.save()
        steps.append(action.kind.value)
        if action.last:
            return RotationResult(record.from_generation, record.to_generation, rollback, True, tuple(steps))
        if stop_after == action.kind.value or should_stop():
            return RotationResult(record.from_generation, record.to_generation, rollback, False, tuple(steps))


def _apply(
    kind: ActionKind, record: RotationRecord, pki: DevicePki, runtime: RotationRuntime, progress: Progress
) -> None:
    old, new = record.from_generation, record.to_generation
    if kind is ActionKind.ADD:
        for index in runtime.site_indexes():
            pki.device(index, new)
        runtime.admit(pki.identities(new))
        runtime.roll_simulators(new, progress)
    elif kind is ActionKind.DEACTIVATE:
        _revoke(pki, runtime, old)
        progress(
            f"revoked {len(pki.serials(old))} certificate(s) of {old}; the broker refuses them from now on"
            " and closed any connection still open on them"
        )
    elif kind is ActionKind.REMOVE:
        pki.remove_generation(old)
    elif kind is ActionKind.ROLLBACK:
        pki.reinstate_generation(old)
        runtime.reload_broker()
        for index in runtime.site_indexes():
            pki.device(index, old)
        runtime.admit(pki.identities(old))
        runtime.roll_simulators(old, progress)
        if pki.serials(new):
            _revoke(pki, runtime, new)
        pki.remove_generation(new)


def _revoke(pki: DevicePki, runtime: RotationRuntime, generation: str) -> None:
    """CRL and reload first, so that a connection cut next cannot come back before the CRL applies."""
    pki.revoke_generation(generation)
    runtime.reload_broker()
    runtime.cut_sessions(pki.identities(generation))


def interrupted_notice(pki: DevicePki) -> str | None:
    record = pki.record
    if record is None:
        return None
    return (
        f"certificate rotation {record.from_generation} -> {record.to_generation} was interrupted at step "
        f"'{record.phase.value}'; run `python cli.py rotate-certs --stack local` to finish it"
        " or add --rollback"
    )


def ensure_private(path: Path) -> None:
    """Keys are created 0600 by the CA; re-assert it for files restored from elsewhere."""
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
