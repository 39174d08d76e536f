"""Local certificate generations and `rotate-certs` step semantics (resume, rollback), without processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from factory_core.cert_rotation import Phase
from factory_core.errors import UsageError
from local_stack.paths import StatePaths
from local_stack.rotation import DevicePki, StoppedStack, interrupted_notice, rotate


class RecordingRuntime(StoppedStack):
    """A stopped stack that records what the rotation asked of the running one, in order."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.calls: list[str] = []

    def roll_simulators(self, generation: str, progress) -> None:
        self.calls.append(f"roll {generation}")

    def reload_broker(self) -> None:
        self.calls.append("reload")


@pytest.fixture
def pki(tmp_path: Path) -> DevicePki:
    paths = StatePaths(tmp_path / "state")
    paths.create()
    authority = DevicePki.open(paths)
    for index in range(2):
        authority.device(index)
    return authority


def _revoked(pki: DevicePki) -> set[int]:
    crl = x509.load_pem_x509_crl(pki.ca.crl_path.read_bytes())
    return {entry.serial_number for entry in crl}


def test_each_site_gets_its_own_certificate_per_generation(pki: DevicePki) -> None:
    device = pki.device(1)
    cert = x509.load_pem_x509_certificate(device.cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "site-01"
    assert device.key_path.stat().st_mode & 0o777 == 0o600
    assert device.generation == "g1" and device.cert_path.parent.name == "g1"
    assert pki.device(1) == device  # issued once, then reused
    assert len(set(pki.serials("g1"))) == 2


def test_full_rotation_revokes_and_removes_the_old_generation(pki: DevicePki) -> None:
    old_serials = set(pki.serials("g1"))
    old_dir = pki.device(0).cert_path.parent
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
    # Simulators move first, then the old certificates are revoked and the broker reloads.
    assert runtime.calls == ["roll g2", "reload"]
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
    assert runtime.calls[-3:] == ["reload", "roll g1", "reload"]


def test_rollback_after_deactivate_reinstates_the_old_certificates(pki: DevicePki) -> None:
    old_serials = set(pki.serials("g1"))
    runtime = RecordingRuntime(2)
    rotate(pki, runtime, lambda _m: None, stop_after="deactivate")
    assert old_serials <= _revoked(pki)
    rotate(pki, runtime, lambda _m: None, rollback=True)
    assert not old_serials & _revoked(pki)
    assert pki.current_generation == "g1"
    assert all(pki.device(index).cert_path.exists() for index in range(2))


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
