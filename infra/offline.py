"""Run the Pulumi program without AWS or the Pulumi CLI, against Pulumi's mocks, and record every resource.

Each registered resource becomes a `ResourceRecord` with its resolved inputs (the provider's
camelCase property names), its URN, parent and provider, so the policy check and the tests can
assert what would be sent to AWS. Invokes (caller identity, AZs, IoT endpoint, ...) get
plausible fixed answers. One process runs one program: Pulumi's runtime state is global.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks
from pulumi.runtime.settings import get_root_resource

from factory_core import stack_file
from infra.settings import PROJECT

PROGRAM = Path(__file__).resolve().parent / "__main__.py"
MOCK_ACCOUNT = "123456789012"
MOCK_REGION_ZONES = ("a", "b", "c")
# What an encrypted (`secure:`) config value reads as offline: only Pulumi could decrypt it.
OFFLINE_SECRET = "offline-placeholder-secret"


@dataclass(frozen=True)
class ResourceRecord:
    type: str
    name: str
    urn: str
    parent: str | None
    id: str
    custom: bool
    provider: str | None  # "<provider urn>::<provider id>" for custom resources
    inputs: dict[str, Any]
    arn: str | None = None  # as the (mocked) provider returned it
    secret_paths: tuple[str, ...] = ()  # input paths (a.b[0]) that were secret
    dependencies: tuple[str, ...] = ()  # URNs it waits for: depends_on and the resources its inputs use

    @property
    def parent_type(self) -> str | None:
        if not self.parent:
            return None
        return self.parent.split("::")[2].split("$")[-1]


@dataclass
class OfflineRun:
    stack: str
    records: list[ResourceRecord] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[ResourceRecord]:
        return [record for record in self.records if record.type == type_token]

    def to_json(self) -> str:
        return json.dumps(
            {
                "stack": self.stack,
                "records": [asdict(record) for record in self.records],
                "outputs": self.outputs,
                "warnings": self.warnings,
            },
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> OfflineRun:
        data = json.loads(text)
        records = [
            ResourceRecord(
                **{
                    **record,
                    "secret_paths": tuple(record["secret_paths"]),
                    "dependencies": tuple(record.get("dependencies", ())),
                }
            )
            for record in data["records"]
        ]
        return cls(stack=data["stack"], records=records, outputs=data["outputs"], warnings=data["warnings"])


def _unwrap(value: Any, path: str, secrets: list[str]) -> Any:
    if rpc.is_rpc_secret(value):
        secrets.append(path)
        return _unwrap(rpc.unwrap_rpc_secret(value), path, secrets)
    if isinstance(value, dict):
        return {key: _unwrap(item, f"{path}.{key}" if path else key, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item, f"{path}[{index}]", secrets) for index, item in enumerate(value)]
    return value


def _pem(label: str, seed: str) -> str:
    return f"-----BEGIN {label}-----\nMOCK{seed[:16]}\n-----END {label}-----\n"


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class RecordingMocks(Mocks):
    """Answers like AWS would (ids, ARNs, computed attributes) and records every registration."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.records: list[ResourceRecord] = []
        self.current = threading.local()
        self._lock = threading.Lock()

    def _arn(self, service: str, resource: str, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:aws:{service}:{region}:{MOCK_ACCOUNT}:{resource}"

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        secret_paths: list[str] = []
        inputs = _unwrap(dict(args.inputs), "", secret_paths)
        resource_id, outputs = self._fake_state(args.typ, args.name, inputs)
        urn, parent, dependencies = getattr(self.current, "registration", ("", "", ()))
        record = ResourceRecord(
            type=args.typ,
            name=args.name,
            urn=urn,
            parent=parent or None,
            id=resource_id or "",
            custom=bool(args.custom),
            provider=args.provider or None,
            inputs=inputs,
            arn=outputs.get("arn") if args.custom else None,
            secret_paths=tuple(secret_paths),
            dependencies=tuple(dependencies),
        )
        with self._lock:
            self.records.append(record)
        return resource_id, outputs

    def _fake_state(self, typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        state = dict(inputs)
        module = typ.split(":")[1].split("/")[0] if typ.count(":") == 2 else ""
        resource_name = str(inputs.get("name") or f"{name}-{_short_hash(name, 7)}")
        resource_id = f"{name}-id"
        state.setdefault("name", resource_name)
        if typ == "aws:s3/bucket:Bucket":
            bucket = str(inputs.get("bucket") or f"{name}-{_short_hash(name)}")
            resource_id = bucket
            state |= {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"}
        elif typ == "aws:ecr/repository:Repository":
            state |= {
                "repositoryUrl": f"{MOCK_ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{resource_name}",
                "registryId": MOCK_ACCOUNT,
                "arn": self._arn("ecr", f"repository/{resource_name}"),
            }
        elif typ == "docker:index/image:Image":
            image_name = str(inputs.get("imageName", name))
            repository = image_name.rsplit(":", 1)[0]
            state |= {"repoDigest": f"{repository}@sha256:{hashlib.sha256(image_name.encode()).hexdigest()}"}
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            state |= {
                "dnsName": f"{resource_name}-{_short_hash(name)}.{self.region}.elb.amazonaws.com",
                "arn": self._arn(
                    "elasticloadbalancing", f"loadbalancer/app/{resource_name}/{_short_hash(name, 16)}"
                ),
            }
        elif typ == "aws:lb/targetGroup:TargetGroup":
            state["arn"] = self._arn(
                "elasticloadbalancing", f"targetgroup/{resource_name}/{_short_hash(name, 16)}"
            )
        elif typ == "aws:iot/certificate:Certificate":
            certificate_id = hashlib.sha256(name.encode()).hexdigest()
            resource_id = certificate_id
            state |= {
                "arn": self._arn("iot", f"cert/{certificate_id}"),
                "certificatePem": _pem("CERTIFICATE", certificate_id),
                "privateKey": _pem("RSA PRIVATE KEY", certificate_id),
                "publicKey": "-----BEGIN PUBLIC KEY-----\nMOCK\n-----END PUBLIC KEY-----\n",
            }
        elif typ == "aws:secretsmanager/secret:Secret":
            state["arn"] = self._arn("secretsmanager", f"secret:{resource_name}-{_short_hash(name, 6)}")
        elif typ == "aws:iam/role:Role":
            state["arn"] = self._arn("iam", f"role/{resource_name}", regional=False)
            resource_id = resource_name
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = self._arn("logs", f"log-group:{resource_name}")
            resource_id = resource_name
        elif typ == "aws:ecs/taskDefinition:TaskDefinition":
            family = inputs.get("family", name)
            state |= {"arn": self._arn("ecs", f"task-definition/{family}:1"), "revision": 1}
        elif typ == "aws:ecs/cluster:Cluster":
            state["arn"] = self._arn("ecs", f"cluster/{resource_name}")
        elif typ == "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream":
            state["arn"] = self._arn("firehose", f"deliverystream/{resource_name}")
        elif typ == "aws:servicediscovery/service:Service":
            state["arn"] = self._arn("servicediscovery", f"service/srv-{_short_hash(name, 12)}")
        elif typ == "aws:iot/topicRule:TopicRule":
            state["arn"] = self._arn("iot", f"rule/{resource_name}")
        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"mock-{_short_hash(name, 28)}"
        elif typ.startswith("aws:ec2/") or typ.startswith("aws:vpc/"):
            kind = typ.rsplit(":", 1)[1]
            resource_id = f"{kind.lower()[:4]}-{_short_hash(name, 17)}"
        state.setdefault(
            "arn", self._arn(module or "mock", f"{typ.rsplit(':', 1)[-1].lower()}/{resource_name}")
        )
        state.setdefault("id", resource_id)
        return resource_id, state

    def call(self, args: MockCallArgs) -> dict[str, Any]:
        token = args.token
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": MOCK_ACCOUNT,
                "arn": f"arn:aws:iam::{MOCK_ACCOUNT}:user/offline",
                "userId": "OFFLINE",
                "id": MOCK_ACCOUNT,
            }
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{zone}" for zone in MOCK_REGION_ZONES]
            return {
                "names": names,
                "zoneIds": [f"use1-az{index}" for index in range(len(names))],
                "id": self.region,
            }
        if token == "aws:iot/getEndpoint:getEndpoint":
            return {
                "endpointAddress": f"mock{_short_hash(self.region, 6)}-ats.iot.{self.region}.amazonaws.com",
                "id": "x",
            }
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": "mock-ecr-password",
                "authorizationToken": "QVdTOm1vY2s=",
                "proxyEndpoint": f"https://{MOCK_ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com",
                "expiresAt": "2099-01-01T00:00:00Z",
                "id": MOCK_ACCOUNT,
            }
        if token == "aws:secretsmanager/getSecret:getSecret":
            name = args.args.get("name", "secret")
            return {"arn": self._arn("secretsmanager", f"secret:{name}-AbCdEf"), "name": name, "id": name}
        return {}


class _RecordingMonitor(MockMonitor):
    """Lets the mocks see each resource's URN and parent, and keeps the stack's outputs."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        # The SDK registers resources from a thread pool; each call runs on one thread.
        self.recording.current.registration = (
            self.make_urn(request.parent, request.type, request.name),
            request.parent,
            tuple(request.dependencies),
        )
        return super().RegisterResource(request)


def config_from_stack_file(path: Path) -> dict[str, str]:
    """A stack file's `config:` as Pulumi hands it to a program; encrypted values get a placeholder."""
    config = stack_file.read_config(path, fix=f"edit {path.name}")
    return stack_file.program_view(config, secret_placeholder=OFFLINE_SECRET)


def run_offline(
    stack: str,
    config: Mapping[str, str],
    *,
    after_program: Callable[[], None] | None = None,
) -> OfflineRun:
    """Run infra/__main__.py for `stack` under mocks; `after_program` may register more resources."""
    region = str(config.get("aws:region", "us-east-1"))
    mocks = RecordingMocks(region)
    monitor = _RecordingMonitor(mocks)
    warnings: list[str] = []

    class _WarningCollector:
        def warning(self, message: str, *args: Any) -> None:
            warnings.append(message % args if args else message)

        def error(self, message: str, *args: Any) -> None:
            warnings.append(message % args if args else message)

        def info(self, message: str, *args: Any) -> None:
            pass

        def debug(self, message: str, *args: Any) -> None:
            pass

    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=stack,
        preview=False,
        monitor=monitor,
        logger=_WarningCollector(),  # type: ignore[arg-type]
    )
    pulumi.runtime.set_all_config(dict(config))

    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[None]:
        runpy.run_path(str(PROGRAM), run_name="__main__")
        if after_program is not None:
            after_program()
        root = get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        # The mock stack finished before the program ran; resolve its exports here instead.
        return pulumi.Output.from_input(exported).apply(outputs.update)

    program()
    return OfflineRun(stack=stack, records=list(mocks.records), outputs=outputs, warnings=warnings)


def run_offline_in_subprocess(stack: str, config: Mapping[str, str], *, timeout_s: float = 300) -> OfflineRun:
    """`run_offline` in a fresh Python process: how one process checks several stacks' programs."""
    handle, name = tempfile.mkstemp(prefix="iotfactory-offline-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(dict(config), file)
        completed = subprocess.run(
            [sys.executable, "-m", "infra.offline", "--stack", stack, "--config-file", name],
            cwd=PROGRAM.parent.parent,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    finally:
        os.unlink(name)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or ["(no output)"]
        raise pulumi.RunError(f"offline run of stack {stack!r} failed: {lines[-1]}")
    return OfflineRun.from_json(completed.stdout)


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.offline")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--config-file", type=Path, required=True)
    args = parser.parse_args()
    config = json.loads(args.config_file.read_text(encoding="utf-8"))
    sys.stdout.write(run_offline(args.stack, config).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
