"""Device certificates of the local stack by generation, and `rotate-certs` with the cloud's step semantics.

The steps, their order and their resume/rollback rules come from `factory_core.cert_rotation` (pure,
shared with dev/prod). Here each step is applied to local things:

- add        — issue the new generation for every site, then move each running simulator onto it,
               one at a time (drain, restart with its checkpoint so `seq` continues);
- deactivate — put the old generation's serials on the CRL and make the broker reload it;
- remove     — delete the old generation's certificate and key files;
- rollback   — take the old serials off the CRL, move the simulators back, revoke and delete the new.

`pki.json` in the state folder records the generations, each site's certificate per generation and
the rotation record, written before and after every step, so an interrupted rotation resumes.
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
from factory_core.errors import UsageError
from factory_core.fleet import site_id
from local_stack.certificate_authority import CertificateAuthority
from local_stack.paths import StatePaths

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeviceCertificate:
    site: str
    generation: str
    serial: int
    cert_path: Path
    key_path: Path


class DevicePki:
    """The stack's CA plus `pki.json`: which certificate each site has in each generation."""

    def __init__(self, paths: StatePaths, ca: CertificateAuthority) -> None:
        self.paths = paths
        self.ca = ca
        self._document = self._read()

    @classmethod
    def open(cls, paths: StatePaths) -> DevicePki:
        return cls(paths, CertificateAuthority.load_or_create(paths.ca_dir))

    def _read(self) -> dict[str, Any]:
        if self.paths.pki_file.exists():
            return dict(json.loads(self.paths.pki_file.read_text()))
        return {
            "generations": cert_rotation.dump_generations(cert_rotation.initial_generations()),
            "rotation": None,
            "devices": {},
        }

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

    def device(self, index: int, generation: str | None = None) -> DeviceCertificate:
        """The site's certificate in `generation` (default: the current one), issued on first use."""
        generation = generation or self.current_generation
        site = site_id(index)
        entry = self._document["devices"].setdefault(generation, {}).get(site)
        if entry is not None and Path(entry["cert"]).exists() and Path(entry["key"]).exists():
            return DeviceCertificate(
                site, generation, int(entry["serial"]), Path(entry["cert"]), Path(entry["key"])
            )
        # The CN is the site id: the broker's ACL (like the IoT policy's thing name) keys on it.
        issued = self.ca.issue_client(site, self.paths.certs_dir / generation)
        self._document["devices"][generation][site] = {
            "serial": str(issued.serial),
            "cert": str(issued.cert_path),
            "key": str(issued.key_path),
        }
        self.save()
        return DeviceCertificate(site, generation, issued.serial, issued.cert_path, issued.key_path)

    def serials(self, generation: str) -> list[int]:
        return [int(entry["serial"]) for entry in self._document["devices"].get(generation, {}).values()]

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
        self._document["devices"].pop(generation, None)
        self.save()


class RotationRuntime(Protocol):
    """What a rotation needs from the running stack (the supervisor); a stopped stack does nothing."""

    def roll_simulators(self, generation: str, progress: Progress) -> None:
        """Move every running simulator whose certificate is of another generation onto `generation`."""
        ...

    def reload_broker(self) -> None: ...

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
        runtime.roll_simulators(new, progress)
    elif kind is ActionKind.DEACTIVATE:
        count = pki.revoke_generation(old)
        runtime.reload_broker()
        progress(f"revoked {count} certificate(s) of {old}; the broker refuses them from now on")
    elif kind is ActionKind.REMOVE:
        pki.remove_generation(old)
    elif kind is ActionKind.ROLLBACK:
        pki.reinstate_generation(old)
        runtime.reload_broker()
        for index in runtime.site_indexes():
            pki.device(index, old)
        runtime.roll_simulators(old, progress)
        if pki.serials(new):
            pki.revoke_generation(new)
            runtime.reload_broker()
        pki.remove_generation(new)


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
