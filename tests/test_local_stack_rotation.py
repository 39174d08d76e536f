"""Local certificate generations and `rotate-certs` step semantics (resume, rollback), without processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from factory_core.cert_rotation import Phase
from factory_core.errors import UsageError
from factory_core.fleet import FleetSettings
from local_stack.paths import StatePaths
from local_stack.rotation import DevicePki, StoppedStack, interrupted_notice, rotate

# 400 machines at one publish each per 2 s: 200 msg/s per site, so 3 connections of <= 80/s.
BUSY_FLEET = FleetSettings(lines_per_site=40)


class RecordingRuntime(StoppedStack):
    """A stopped stack that records what the rotation asked of the running one, in order."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.calls: list[str] = []

    def roll_simulators(self, generation: str, progress) -> None:
        self.calls.append(f"roll {generation}")

    def reload_broker(self) -> None:
        self.calls.append("reload")

    def admit(self, identities: dict[str, str]) -> None:
        self.calls.append(f"admit {' '.join(sorted(identities))}")

    def cut_sessions(self, identities) -> None:
        self.calls.append(f"cut {' '.join(sorted(identities))}")


@pytest.fixture
def pki(tmp_path: Path) -> DevicePki:
    paths = StatePaths(tmp_path / "state")
    paths.create()
    authority = DevicePki.open(paths)
    for index in range(2):
        authority.device(index)
    return authority


def _common_name(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def _revoked(pki: DevicePki) -> set[int]:
    crl = x509.load_pem_x509_crl(pki.ca.crl_path.read_bytes())
    return {entry.serial_number for entry in crl}


def test_each_connection_gets_its_own_certificate_named_as_its_client_id(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.create()
    pki = DevicePki.open(paths, BUSY_FLEET)
    site = pki.device(1)
    # The CN is the client id the planner gives the connection with the generation as prefix.
    assert site.client_ids == ("g1-site-01-c00", "g1-site-01-c01", "g1-site-01-c02")
    assert site.cert_dir == paths.certs_dir / "g1" / "site-01"
    for client_id in site.client_ids:
        assert _common_name(site.cert_dir / f"{client_id}.pem") == client_id
        assert (site.cert_dir / f"{client_id}.key").stat().st_mode & 0o777 == 0o600
    assert pki.device(1) == site  # issued once, then reused
    assert len(set(site.serials)) == 3
    assert pki.identities("g1") == dict.fromkeys(site.client_ids, "site-01")
    assert pki.usable_identities() == pki.identities("g1")


def test_certificates_of_the_one_per_site_layout_are_revoked(tmp_path: Path) -> None:
    """pki.json of older stacks: one certificate per site, CN = site id, usable as any client id."""
    paths = StatePaths(tmp_path / "state")
    paths.create()
    pki = DevicePki.open(paths)
    old = pki.ca.issue_client("site-00", paths.certs_dir / "g1")
    document = {
        "generations": [{"name": "g1", "status": "ACTIVE"}],
        "rotation": None,
        "devices": {"g1": {"site-00": {"serial": str(old.serial), "cert": str(old.cert_path),
                                       "key": str(old.key_path)}}},
    }
    paths.pki_file.write_text(json.dumps(document))
    upgraded = DevicePki.open(paths)
    assert old.serial in _revoked(upgraded)
    assert not old.cert_path.exists() and not old.key_path.exists()
    assert upgraded.legacy_notice is not None and "revoked 1" in upgraded.legacy_notice
    assert DevicePki.open(paths).legacy_notice is None  # said once


def test_full_rotation_revokes_and_removes_the_old_generation(pki: DevicePki) -> None:
    old_serials = set(pki.serials("g1"))
    old_dir = pki.device(0).cert_dir.parent
    runtime = RecordingRuntime(2)
    messages: list[str] = []
    result = rotate(pki, runtime, messages.append)
    assert result.steps == ("add", "deactivate", "remove", "finish")
    assert (result.from_generation, result.to_generation, result.finished) == ("g1", "g2", True)
    assert pki.current_generation == "g2" and pki.record is None
    assert [g.name for g in pki.generations] == ["g2"]
    assert old_serials <= _revoked(pki)
    assert not set(pki.serials("g2")) & _revoked(pki)
    assert not old_dir.exists()
    # The broker learns the new identities, the simulators move, then the old certificates are
    # revoked and the broker reloads its CRL before their open sessions are cut (a session cut
    # first could reconnect before the CRL applies).
    assert runtime.calls == [
        "admit g2-site-00-c00 g2-site-01-c00",
        "roll g2",
        "reload",
        "cut g1-site-00-c00 g1-site-01-c00",
    ]
    assert any("revoked 2 certificate(s) of g1" in message for message in messages)
    assert rotate(pki, runtime, messages.append).to_generation == "g3"


def test_interrupted_rotation_resumes_where_it_stopped(pki: DevicePki) -> None:
    runtime = RecordingRuntime(2)
    first = rotate(pki, runtime, lambda _m: None, stop_after="add")
    assert first.steps == ("add",) and not first.finished
    assert pki.record is not None and pki.record.phase is Phase.ADDED
    reopened = DevicePki.open(pki.paths)  # state survives on disk
    notice = interrupted_notice(reopened)
    assert notice is not None and "'added'" in notice and "--rollback" in notice
    second = rotate(reopened, runtime, lambda _m: None)
    assert second.steps == ("deactivate", "remove", "finish")
    assert reopened.current_generation == "g2"


def test_rollback_after_add_returns_to_the_old_generation(pki: DevicePki) -> None:
    old_serials = set(pki.serials("g1"))
    runtime = RecordingRuntime(2)
    rotate(pki, runtime, lambda _m: None, stop_after="add")
    new_serials = set(pki.serials("g2"))
    result = rotate(pki, runtime, lambda _m: None, rollback=True)
    assert result.rolled_back and result.steps == ("rollback",)
    assert pki.current_generation == "g1" and pki.record is None
    assert not old_serials & _revoked(pki)
    assert new_serials <= _revoked(pki)  # used by simulators for a while: never valid again
    assert pki.serials("g2") == []
    assert runtime.calls[-5:] == [
        "reload",
        "admit g1-site-00-c00 g1-site-01-c00",
        "roll g1",
        "reload",
        "cut g2-site-00-c00 g2-site-01-c00",
    ]


def test_rollback_after_deactivate_reinstates_the_old_certificates(pki: DevicePki) -> None:
    old_serials = set(pki.serials("g1"))
    runtime = RecordingRuntime(2)
    rotate(pki, runtime, lambda _m: None, stop_after="deactivate")
    assert old_serials <= _revoked(pki)
    rotate(pki, runtime, lambda _m: None, rollback=True)
    assert not old_serials & _revoked(pki)
    assert pki.current_generation == "g1"
    assert all((pki.device(index).cert_dir / f"g1-site-0{index}-c00.pem").exists() for index in range(2))


def test_rollback_is_refused_once_the_old_generation_is_removed(pki: DevicePki) -> None:
    runtime = RecordingRuntime(2)
    rotate(pki, runtime, lambda _m: None, stop_after="remove")
    with pytest.raises(UsageError, match="already removed"):
        rotate(pki, runtime, lambda _m: None, rollback=True)
    assert rotate(pki, runtime, lambda _m: None).steps == ("finish",)


def test_rollback_without_a_rotation_is_a_usage_error(pki: DevicePki) -> None:
    with pytest.raises(UsageError, match="nothing to roll back"):
        rotate(pki, RecordingRuntime(2), lambda _m: None, rollback=True)


def test_sites_added_during_a_rotation_are_revoked_with_their_generation(pki: DevicePki) -> None:
    runtime = RecordingRuntime(2)
    rotate(pki, runtime, lambda _m: None, stop_after="add")
    pki.device(2, "g1")  # a site whose old certificate was issued before the scale
    third_site_g1 = pki.serials("g1")
    rotate(pki, RecordingRuntime(3), lambda _m: None)
    assert set(third_site_g1) <= _revoked(pki)
    assert pki.device(2).generation == "g2"  # issued when that simulator next starts
