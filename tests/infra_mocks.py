"""Test helper for the Pulumi program: run it under mocks in a subprocess per stack, in parallel.

Pulumi's runtime state is process-global, so every program run (dev, prod, ...) gets its own
Python process; the results (`OfflineRun`: every resource's resolved inputs) come back as JSON and
are cached for the whole test session. Run as a script, this module is that subprocess:

    python tests/infra_mocks.py --stack dev --config-file cfg.json [--fake-bundle] [--inject insecure]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra.offline import MOCK_ACCOUNT, OfflineRun, ResourceRecord, config_from_stack_file  # noqa: E402

PYTHON = sys.executable
ALLOWED_CIDR_DEV = "198.51.100.0/24"
TEST_CERTIFICATE_ARN = "arn:aws:acm:eu-west-1:123456789012:certificate/11111111-2222-3333-4444-555555555555"
TEST_DOMAIN = "factory.example.com"
INSECURE_PREFIX = "insecure-"
RUN_TIMEOUT_S = 120
LARGE_FLEET = 12
ALERTING_PROD = {
    "webhookUrl": "https://hooks.example.com/iotfactory",
    "snsSubscriptions": [
        {"protocol": "email", "endpoint": "oncall@example.com"},
        {"protocol": "https", "endpoint": "https://pager.example.com/sns"},
    ],
}


def stack_config(stack: str, **overrides: Any) -> dict[str, str]:
    """The stack file's config as the program receives it, with `iotfactory:<key>` overrides."""
    config = config_from_stack_file(REPO_ROOT / f"Pulumi.{stack}.yaml")
    for key, value in overrides.items():
        full_key = key if ":" in key else f"iotfactory:{key}"
        if value is None:
            config.pop(full_key, None)
        elif isinstance(value, dict | list):
            config[full_key] = json.dumps(value)
        else:
            config[full_key] = str(value).lower() if isinstance(value, bool) else str(value)
    return config


@dataclass(frozen=True)
class RunSpec:
    stack: str
    config: Mapping[str, str]
    fake_bundle: bool = True
    inject: str | None = None


# The runs the tests share. simulatorCount is pinned so the tests do not follow `scale`.
RUNS: dict[str, RunSpec] = {
    "dev": RunSpec("dev", stack_config("dev", simulatorCount=2)),
    # prod also mid-rotation: g1 retired (INACTIVE), g2 serving.
    "prod": RunSpec(
        "prod",
        stack_config(
            "prod",
            simulatorCount=3,
            certificateArn=TEST_CERTIFICATE_ARN,
            domainName=TEST_DOMAIN,
            accountId=MOCK_ACCOUNT,
            certGenerations=[{"name": "g1", "status": "INACTIVE"}, {"name": "g2", "status": "ACTIVE"}],
            alerting=ALERTING_PROD,
        ),
    ),
    "insecure": RunSpec("dev", stack_config("dev", simulatorCount=1), inject="insecure"),
    "real-bundle": RunSpec("dev", stack_config("dev", simulatorCount=2), fake_bundle=False),
    # dev with the other choices of issue 14: Basic Ingest, a web ACL, history on task storage, no rotation.
    "dev-hardened": RunSpec(
        "dev",
        stack_config(
            "dev",
            simulatorCount=1,
            archiveMode="basic-ingest",
            waf={"enabled": True, "rateLimit": 500},
            monitoringHistory={"efs": False},
            secretRotation={"enabled": False},
        ),
    ),
    # More sites than Route 53 puts in one multivalue answer (8), with the real Prometheus config.
    "dev-large": RunSpec("dev", stack_config("dev", simulatorCount=LARGE_FLEET), fake_bundle=False),
}


@dataclass
class _Pending:
    process: subprocess.Popen[str]
    config_file: Path
    result: OfflineRun | None = None
    error: str | None = None


@dataclass
class _Runner:
    pending: dict[str, _Pending] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, names: tuple[str, ...]) -> None:
        with self.lock:
            for name in names:
                if name not in self.pending:
                    self.pending[name] = _start(RUNS[name])

    def get(self, name: str) -> OfflineRun:
        self.start((name,))
        pending = self.pending[name]
        with self.lock:
            if pending.result is None and pending.error is None:
                try:
                    stdout, stderr = pending.process.communicate(timeout=RUN_TIMEOUT_S)
                finally:
                    _stop(pending)
                if pending.process.returncode == 0:
                    pending.result = OfflineRun.from_json(stdout)
                else:
                    pending.error = (
                        f"offline run {name!r} failed (exit {pending.process.returncode}):\n{stderr[-4000:]}"
                    )
        if pending.error:
            raise AssertionError(pending.error)
        assert pending.result is not None
        return pending.result

    def stop_all(self) -> None:
        for pending in self.pending.values():
            _stop(pending)


def _stop(pending: _Pending) -> None:
    if pending.process.poll() is None:
        pending.process.kill()
    pending.process.communicate()  # reaps it and closes its pipes
    pending.config_file.unlink(missing_ok=True)


def _start(spec: RunSpec) -> _Pending:
    handle, name = tempfile.mkstemp(prefix="iotfactory-offline-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(dict(spec.config), file)
    command = [PYTHON, str(Path(__file__).resolve()), "--stack", spec.stack, "--config-file", name]
    if spec.fake_bundle:
        command.append("--fake-bundle")
    if spec.inject:
        command += ["--inject", spec.inject]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return _Pending(process, Path(name))


RUNNER = _Runner()
atexit.register(RUNNER.stop_all)


def prefetch(*names: str) -> None:
    """Start these runs now, side by side, so waiting for the first overlaps the others."""
    RUNNER.start(names)


def offline_run(name: str) -> OfflineRun:
    """A shared run by name (see RUNS), computed once per test session."""
    return RUNNER.get(name)


def run_once(
    stack: str, config: Mapping[str, str], *, fake_bundle: bool = True
) -> subprocess.CompletedProcess[str]:
    """One extra program run (e.g. with a config error); returns the finished process."""
    pending = _start(RunSpec(stack, config, fake_bundle=fake_bundle))
    try:
        stdout, stderr = pending.process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        _stop(pending)
    return subprocess.CompletedProcess(pending.process.args, pending.process.returncode, stdout, stderr)


# --- helpers for assertions ------------------------------------------------------------------


def one(run: OfflineRun, type_token: str, name_part: str = "") -> ResourceRecord:
    matches = [record for record in run.of_type(type_token) if name_part in record.name]
    assert len(matches) == 1, (
        f"expected one {type_token} named *{name_part}*, got {[r.name for r in matches]}"
    )
    return matches[0]


def policy_document(record: ResourceRecord, key: str = "policy") -> dict[str, Any]:
    value = record.inputs[key]
    return json.loads(value) if isinstance(value, str) else value


def containers(record: ResourceRecord) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in json.loads(record.inputs["containerDefinitions"])}


def environment(container: Mapping[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("environment", [])}


# --- the subprocess side ----------------------------------------------------------------------

FAKE_BUNDLE = {
    "prometheus/prometheus.yml": "# fake bundle for infra tests\nscrape_configs: []\n",
    "prometheus/rules/alerts.yml": "groups: []\n",
    "grafana/provisioning/datasources/prometheus.yml": "apiVersion: 1\n",
    "grafana/dashboards/factory-overview.json": "{}\n",
    "alertmanager/alertmanager.yml": "route: {receiver: x}\nreceivers: [{name: x}]\n",
}


def install_fake_bundle() -> None:
    """A tiny stand-in for observability.config_bundle, for tests that are not about its content."""
    module = types.ModuleType("observability.config_bundle")

    def cloud_bundle(
        discovery_dns_names: list[str], metrics_port: int, scrape_interval_s: int, alert_channels: Any = None
    ) -> dict[str, str]:
        key = "prometheus/prometheus.yml"
        targets = [f"# {name}:{metrics_port} every {scrape_interval_s}s\n" for name in discovery_dns_names]
        return {**FAKE_BUNDLE, key: FAKE_BUNDLE[key] + "".join(targets)}

    module.cloud_bundle = cloud_bundle  # type: ignore[attr-defined]
    module.cloud_alert_channels = lambda **channels: channels  # type: ignore[attr-defined]
    module.ALERTMANAGER_PREFIX = "alertmanager/"  # type: ignore[attr-defined]
    module.ALERTMANAGER_CONFIG_DIR = "/etc/alertmanager-config"  # type: ignore[attr-defined]
    module.CLOUD_ALERTMANAGER_PLACEHOLDERS = {"@SMTP_USERNAME@": "SMTP_USERNAME"}  # type: ignore[attr-defined]
    module.CLOUD_ALERTMANAGER_RUN_DIR = "/run/alertmanager"  # type: ignore[attr-defined]
    module.CLOUD_SMTP_PASSWORD_FILE = "/run/alertmanager/smtp-password"  # type: ignore[attr-defined]
    module.PROMETHEUS_PREFIX = "prometheus/"  # type: ignore[attr-defined]
    module.PROMETHEUS_CONFIG_DIR = "/etc/prometheus-config"  # type: ignore[attr-defined]
    module.GRAFANA_PREFIX = "grafana/"  # type: ignore[attr-defined]
    module.GRAFANA_CONFIG_DIR = "/etc/grafana-config"  # type: ignore[attr-defined]
    module.CLOUD_PROMETHEUS_ARGS = (  # type: ignore[attr-defined]
        "--config.file=/etc/prometheus-config/prometheus.yml",
        "--web.route-prefix=/prometheus/",
    )
    module.CLOUD_GRAFANA_ENVIRONMENT = {"GF_PATHS_PROVISIONING": "/etc/grafana-config/provisioning"}  # type: ignore[attr-defined]
    module.grafana_provisioning = types.SimpleNamespace(ALERT_EMAIL_ENV="ALERT_EMAIL_TO")  # type: ignore[attr-defined]
    sys.modules["observability.config_bundle"] = module


def add_insecure_resources() -> None:
    """Resources that break one rule each, registered after the program (no provider: default)."""
    import pulumi
    import pulumi_aws as aws

    aws.s3.Bucket(f"{INSECURE_PREFIX}bucket")
    aws.ec2.SecurityGroup(
        f"{INSECURE_PREFIX}ssh",
        vpc_id="vpc-123",
        ingress=[{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}],
    )
    aws.iam.RolePolicy(
        f"{INSECURE_PREFIX}admin",
        role="some-role",
        policy=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    aws.iam.RolePolicy(
        f"{INSECURE_PREFIX}star-resource",
        role="some-role",
        policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )
    aws.iam.RolePolicyAttachment(
        f"{INSECURE_PREFIX}managed",
        role="some-role",
        policy_arn="arn:aws:iam::aws:policy/AdministratorAccess",
    )
    aws.cloudwatch.LogGroup(f"{INSECURE_PREFIX}logs")
    aws.ecr.Repository(f"{INSECURE_PREFIX}repo", name="insecure", image_tag_mutability="MUTABLE")
    aws.iot.Policy(
        f"{INSECURE_PREFIX}iot",
        policy=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
        ),
    )
    aws.ecs.TaskDefinition(
        f"{INSECURE_PREFIX}task",
        family="insecure",
        container_definitions=json.dumps(
            [
                {
                    "name": "app",
                    "image": "nginx:latest",
                    "environment": [{"name": "KEY", "value": "-----BEGIN RSA PRIVATE KEY-----\nabc"}],
                }
            ]
        ),
    )
    aws.ecs.Service(f"{INSECURE_PREFIX}service", cluster="c", task_definition="t", desired_count=1)
    aws.lb.LoadBalancer(f"{INSECURE_PREFIX}alb", load_balancer_type="application", subnets=["a", "b"])
    aws.s3.BucketObjectv2(
        f"{INSECURE_PREFIX}key-object", bucket="b", key="k", content="-----BEGIN PRIVATE KEY-----"
    )
    # Results anyone's query may send elsewhere, unencrypted, with no scan limit.
    aws.athena.Workgroup(
        f"{INSECURE_PREFIX}workgroup",
        configuration={"result_configuration": {"output_location": "s3://someone-elses-bucket/"}},
    )
    pulumi.export("insecure", True)


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", required=True)
    parser.add_argument("--config-file", type=Path, required=True)
    parser.add_argument("--fake-bundle", action="store_true")
    parser.add_argument("--inject", choices=["insecure"])
    args = parser.parse_args()
    if args.fake_bundle:
        install_fake_bundle()
    from infra.offline import run_offline

    config = json.loads(args.config_file.read_text(encoding="utf-8"))
    run = run_offline(args.stack, config, after_program=add_insecure_resources if args.inject else None)
    sys.stdout.write(run.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
