"""Pure pieces of the program: subnet plan, image tag digest (.dockerignore rules), ECR lifecycle, layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.components.image import (
    build_context_digest,
    ecr_repository_arn,
    lifecycle_policy,
    read_ignore_patterns,
)
from infra.components.monitoring import ConfigLayout, prometheus_command
from infra.components.network import subnet_cidrs

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_subnets_are_stable_per_zone_and_do_not_overlap() -> None:
    public, private = subnet_cidrs("10.42.0.0/16", 2)
    assert public == ["10.42.0.0/20", "10.42.16.0/20"]
    assert private == ["10.42.128.0/20", "10.42.144.0/20"]
    more_public, _ = subnet_cidrs("10.42.0.0/16", 3)
    assert more_public[:2] == public  # adding a zone never renumbers an existing subnet
    with pytest.raises(ValueError, match="two availability zones"):
        subnet_cidrs("10.42.0.0/16", 1)


def _context(tmp_path: Path, ignore: str | None) -> tuple[Path, Path]:
    (tmp_path / "simulator").mkdir()
    (tmp_path / "simulator" / "app.py").write_text("print('v1')\n")
    (tmp_path / "simulator" / "__pycache__").mkdir()
    (tmp_path / "simulator" / "__pycache__" / "app.pyc").write_bytes(b"\0")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("guide\n")
    (tmp_path / "uv.lock").write_text("lock\n")
    dockerfile = tmp_path / "simulator" / "Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim\n")
    if ignore is not None:
        (tmp_path / ".dockerignore").write_text(ignore)
    return tmp_path, dockerfile


ALLOW_LIST_IGNORE = "# only what the image needs\n*\n!uv.lock\n!simulator/\n**/__pycache__\n"


def test_image_digest_follows_what_docker_sends(tmp_path: Path) -> None:
    context, dockerfile = _context(tmp_path, ALLOW_LIST_IGNORE)
    first = build_context_digest(context, dockerfile)
    assert build_context_digest(context, dockerfile) == first

    (context / "docs" / "guide.md").write_text("changed\n")  # ignored by `*`
    (context / "simulator" / "__pycache__" / "app.pyc").write_bytes(b"\1")  # ignored again
    assert build_context_digest(context, dockerfile) == first

    (context / "simulator" / "app.py").write_text("print('v2')\n")  # re-included by !simulator/
    second = build_context_digest(context, dockerfile)
    assert second != first

    (context / "uv.lock").chmod(0o755)  # Docker sends the mode too
    third = build_context_digest(context, dockerfile)
    assert third != second

    dockerfile.write_text("FROM python:3.12-slim\n")  # sent even when ignored
    assert build_context_digest(context, dockerfile) != third


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    context, dockerfile = _context(tmp_path, "docs\n")
    Path(f"{dockerfile}.dockerignore").write_text("*\n!simulator/\n")
    assert read_ignore_patterns(context, dockerfile) == ["*", "!simulator/"]
    before = build_context_digest(context, dockerfile)
    (context / "uv.lock").write_text("changed\n")
    assert build_context_digest(context, dockerfile) == before


def test_without_ignore_file_the_heavy_folders_are_assumed_ignored(tmp_path: Path) -> None:
    context, dockerfile = _context(tmp_path, None)
    (context / ".venv").mkdir()
    (context / ".venv" / "lib.py").write_text("x\n")
    before = build_context_digest(context, dockerfile)
    (context / ".venv" / "lib.py").write_text("y\n")
    assert build_context_digest(context, dockerfile) == before
    (context / "docs" / "guide.md").write_text("changed\n")
    assert build_context_digest(context, dockerfile) != before


def test_repository_digest_ignores_files_outside_the_image(tmp_path: Path) -> None:
    if read_ignore_patterns(REPO_ROOT, REPO_ROOT / "simulator" / "Dockerfile") is None:
        pytest.skip("the repository has no .dockerignore yet")
    assert len(build_context_digest(REPO_ROOT, REPO_ROOT / "simulator" / "Dockerfile")) == 64


def test_ecr_lifecycle_keeps_recent_images_and_expires_untagged() -> None:
    rules = lifecycle_policy(keep_tagged_images=20, untagged_expire_days=7)["rules"]
    assert [rule["rulePriority"] for rule in rules] == [1, 2]
    assert rules[0]["selection"] == {
        "tagStatus": "untagged",
        "countType": "sinceImagePushed",
        "countUnit": "days",
        "countNumber": 7,
    }
    assert rules[1]["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20}


def test_prebuilt_image_reference_maps_to_its_repository() -> None:
    ref = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/team/simulator@sha256:" + "a" * 64
    assert ecr_repository_arn(ref) == "arn:aws:ecr:eu-west-1:111122223333:repository/team/simulator"
    assert ecr_repository_arn("ghcr.io/org/simulator@sha256:" + "a" * 64) is None


def test_prometheus_flags_from_the_layout_win_and_never_repeat() -> None:
    command = prometheus_command(
        ("--config.file=/etc/prometheus-config/prometheus.yml", "--web.route-prefix=/prometheus/"),
        ("--config.file=/other.yml", "--storage.tsdb.path=/prometheus", "--web.route-prefix=/x/"),
    )
    assert command == [
        "--config.file=/etc/prometheus-config/prometheus.yml",
        "--web.route-prefix=/prometheus/",
        "--storage.tsdb.path=/prometheus",
    ]


def test_every_bundle_key_must_have_a_mount() -> None:
    layout = ConfigLayout(
        directories={"prometheus/": "/etc/prometheus-config", "grafana/": "/etc/grafana-config"},
        prometheus_args=(),
        grafana_environment={},
        alert_email_env="ALERT_EMAIL_TO",
    )
    assert layout.directory_of("grafana/dashboards/x.json") == "/etc/grafana-config"
    assert layout.volume("prometheus/") == "prometheus-config"
    with pytest.raises(ValueError, match="alertmanager/"):
        layout.directory_of("alertmanager/config.yml")
