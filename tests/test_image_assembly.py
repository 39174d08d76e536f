"""The simulator image without a Docker engine: assembled from simulator/Dockerfile and .dockerignore
as they are (tests/support_image.py), then run the way the ECS task definition runs it.

The run uses the dev stack's simulator container definition (rendered under Pulumi mocks): its user,
its environment, its two secrets filled from a local device certificate the way ECS fills them from
Secrets Manager. Only where it connects differs (the test broker, an ephemeral metrics port) and the
CA it trusts (FACTORY_CA_PEM: the test CA instead of the image's Amazon roots).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker, Pki
from infra_mocks import containers, offline_run
from support_dockerfile import DOCKERFILE, REPO, export_output, pruned_packages
from support_image import AssembledImage, AssemblyError, ImageAssembler
from support_image_imports import import_problems
from support_mqtt import tls_client

from factory_core.fleet import GROUND_TRUTH_SEGMENT, TOPIC_ROOT, FleetSettings
from factory_core.payload_contract import validate_payload
from infra.components.iot import CERTIFICATE_PEM_KEY, PRIVATE_KEY_PEM_KEY
from local_stack.ports import free_port
from local_stack.readiness import wait_until

pytestmark = pytest.mark.integration

UV = Path(sys.executable).with_name("uv")
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
# The issue's own words: the image must not contain the platform tooling, whatever the prune list says.
PLATFORM_TOOLING = ("pulumi", "boto3", "typer", "rich")
# Where the run differs from ECS: the endpoint and ports of this machine.
LOCAL_OVERRIDES = ("FACTORY_ENDPOINT", "FACTORY_PORT", "FACTORY_METRICS_PORT")
KEY_MATERIAL = re.compile(r"\.(pem|key|crt|p12|pfx)$|(^|/)\.env$")
SUMMARY = re.compile(
    r"generated (?P<generated>\d+) messages .* published (?P<published>\d+) .*"
    r"failed: (?P<failed>[^;]+); unsent at exit (?P<unsent>\d+)"
)
START_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def assembler() -> Iterator[ImageAssembler]:
    if os.geteuid() != 0:
        pytest.fail("the image runs as its own uid (10001): run this test as root, as CI does")
    workspace = Path(tempfile.mkdtemp(prefix="iotfactory-image-"))
    workspace.chmod(0o755)  # the image's user must reach the files, as in the container
    try:
        yield ImageAssembler(workspace, UV)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


@pytest.fixture(scope="session")
def image(assembler: ImageAssembler) -> AssembledImage:
    return assembler.assemble(DOCKERFILE, REPO)


@pytest.fixture(scope="session")
def simulator_container() -> dict[str, Any]:
    """The dev stack's simulator container of site-00, as the task definition has it."""
    (task,) = [
        record
        for record in offline_run("dev").of_type(TASK_DEFINITION)
        if record.inputs["family"].endswith("-simulator-site-00")
    ]
    return containers(task)["simulator"]


def ecs_environment(
    container: Mapping[str, Any], pki: Pki, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment plus its secrets, resolved the way ECS resolves `valueFrom`."""
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert set(overrides) == set(LOCAL_OVERRIDES) and set(overrides) <= set(environment)
    # The shard's secret is a JSON document; `valueFrom` is `<secret arn>:<json key>::`.
    secret = {
        CERTIFICATE_PEM_KEY: pki.device.cert_path.read_text(),
        PRIVATE_KEY_PEM_KEY: pki.device.key_path.read_text(),
    }
    for item in container["secrets"]:
        environment[item["name"]] = secret[item["valueFrom"].split(":")[-3]]
    environment["FACTORY_CA_PEM"] = pki.ca.ca_cert_path.read_text()
    # The task publishes into its stack's namespace (factory/simulator/dev/...), which the AWS IoT
    # policy allows; this broker's ACL mirrors the local stack's layout (no namespace), so the run here
    # publishes un-namespaced. The namespace itself is checked under mocks (tests/test_infra_*.py).
    fleet = json.loads(environment["FACTORY_CONFIG_JSON"])
    assert fleet.pop("topic_namespace") == "dev"
    environment["FACTORY_CONFIG_JSON"] = json.dumps(fleet)
    return environment | dict(overrides)


class Received:
    """The rule runner's identity reading everything the simulator publishes, validating each payload."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.seen: set[tuple[str, int]] = set()
        self.telemetry_seq: dict[str, int] = {}  # topic -> highest seq
        self.invalid: list[str] = []
        self.subscribed = threading.Event()
        client_id = f"image-test-{uuid.uuid4().hex[:8]}"
        self.client = tls_client(broker.pki.ca.ca_cert_path, broker.pki.reader, client_id)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{TOPIC_ROOT}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            document = validate_payload(message.payload)
        except ValueError as error:
            self.invalid.append(f"{message.topic}: {error}")
            return
        with self.lock:
            self.seen.add((message.topic, document["seq"]))
            if GROUND_TRUTH_SEGMENT not in message.topic.split("/"):
                highest = self.telemetry_seq.get(message.topic, 0)
                self.telemetry_seq[message.topic] = max(highest, document["seq"])

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def rounds(self, machines: int) -> int:
        """How many samples every one of `machines` machines has published at least."""
        with self.lock:
            if len(self.telemetry_seq) < machines:
                return 0
            return min(self.telemetry_seq.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_ecs_runs_the_image_as_it_is(image: AssembledImage, simulator_container: dict[str, Any]) -> None:
    """The task definition keeps the image's entrypoint and runs it as the image's user."""
    assert "entryPoint" not in simulator_container and "command" not in simulator_container
    assert simulator_container["user"] == "{}:{}".format(*image.user)
    assert image.user[0] != 0


def test_the_image_publishes_over_mtls_stays_healthy_and_drains_on_sigterm(
    image: AssembledImage, broker: Broker, simulator_container: dict[str, Any]
) -> None:
    environment = ecs_environment(
        simulator_container,
        broker.pki,
        {"FACTORY_ENDPOINT": broker.host, "FACTORY_PORT": str(broker.port),
         "FACTORY_METRICS_PORT": str(free_port())},
    )
    fleet = FleetSettings.model_validate_json(environment["FACTORY_CONFIG_JSON"])
    assert fleet.qos == 1, "the drain check below is about QoS 1 acknowledgements"
    received = Received(broker)
    process = image.popen(image.entrypoint, environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Two samples from every machine: connected, publishing, and the metrics exporter is up.
        started = wait_until(
            lambda: received.rounds(fleet.machines_per_site) >= 2 or process.poll() is not None,
            START_TIMEOUT_S,
        )
        assert started and process.poll() is None, f"the image did not publish: {process.communicate()}"
        health = image.check_health(environment)
        assert health.returncode == 0, f"HEALTHCHECK failed while the simulator runs: {health.stderr}"
        process.send_signal(image.stop_signal)
        _, stderr = process.communicate(timeout=simulator_container["stopTimeout"])
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        received.close()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    summary = SUMMARY.search(stderr)
    assert summary, stderr
    generated = int(summary["generated"])
    # QoS 1: `published` counts PUBACKs, so every generated message was acknowledged.
    assert summary["failed"] == "none" and int(summary["unsent"]) == 0, summary[0]
    assert int(summary["published"]) == generated > 0, summary[0]
    assert wait_until(lambda: received.count() >= generated, 15), (received.count(), generated)
    assert received.count() == generated and not received.invalid, received.invalid[:3]
    assert "site-00" in stderr and "connected" in stderr
    # The same check fails once nothing serves the metrics: it does test something.
    assert image.check_health(environment).returncode != 0


def test_the_image_has_none_of_the_platform_tooling(image: AssembledImage) -> None:
    distributions = importlib.metadata.packages_distributions()
    pruned = {name.lower() for name in pruned_packages()}
    modules = {
        module
        for module, owners in distributions.items()
        if any(owner.lower().replace("_", "-") in pruned for owner in owners) and module.isidentifier()
    }
    modules |= set(PLATFORM_TOOLING)
    probe = (
        "import importlib, json, sys\n"
        "found = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    found.append(name)\n"
        "print(json.dumps(found))\n"
    )
    result = image.run(["python", "-c", probe, *sorted(modules)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_image_environment_holds_exactly_the_exported_lock(image: AssembledImage) -> None:
    """The builder's export, and nothing else: no pip or setuptools, nothing the prune list dropped."""
    stage, path = export_output()
    exported = {
        normalized(line.split("==")[0])
        for line in image.stages[stage].host(path).read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    listing = "import importlib.metadata as m, json; print(json.dumps([d.name for d in m.distributions()]))"
    result = image.run(["python", "-c", listing])
    assert result.returncode == 0, result.stderr
    installed = {normalized(name) for name in json.loads(result.stdout)}
    assert installed == exported, f"extra: {installed - exported}, missing: {exported - installed}"


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_the_app_folder_holds_what_the_entrypoint_imports_and_nothing_else(image: AssembledImage) -> None:
    reached, problems = import_problems(image, REPO)
    assert problems == []
    app = image.host(image.workdir)
    assert {entry.name for entry in app.iterdir()} == reached
    files = [path.relative_to(app).as_posix() for path in app.rglob("*") if path.is_file()]
    assert not [name for name in files if KEY_MATERIAL.search(name)]
    assert not [name for name in files if "PRIVATE KEY-----" in (app / name).read_text(errors="replace")]
    assert not [name for name in files if Path(name).name in ("Dockerfile", ".dockerignore")]


def test_nothing_in_the_image_is_writable_by_its_user(image: AssembledImage) -> None:
    walk = (
        "import json, os, sys\n"
        "writable = [os.path.join(folder, name)\n"
        "            for top in sys.argv[1:] for folder, dirs, files in os.walk(top)\n"
        "            for name in ['.', *dirs, *files] if os.access(os.path.join(folder, name), os.W_OK)]\n"
        "print(json.dumps(writable[:10]))\n"
    )
    roots = [str(image.host(image.workdir)), str(image.host("/opt/venv"))]
    result = image.run(["python", "-c", walk, *roots])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_only_the_image_is_on_the_python_path(image: AssembledImage) -> None:
    """The WORKDIR, the base interpreter's standard library and the image's venv: nothing of this host."""
    result = image.run(["python", "-c", "import json, sys; print(json.dumps([sys.path, sys.base_prefix]))"])
    assert result.returncode == 0, result.stderr
    path, base_prefix = json.loads(result.stdout)
    root = str(image.fs.root)
    assert path[0] == ""  # the WORKDIR: `python -m` puts the current folder first
    outside = [entry for entry in path[1:] if not entry.startswith(root)]
    assert all(entry.startswith(f"{base_prefix}/lib") for entry in outside), outside
    assert not [entry for entry in outside if entry.endswith("-packages")], outside
    (packages,) = [entry for entry in path if entry.endswith("-packages")]
    assert Path(packages).is_relative_to(image.host("/opt/venv")), packages


# --- the same checks fail when the image is broken -------------------------------------------------


def variant_dockerfile(directory: Path, old: str, new: str) -> Path:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text, f"the Dockerfile changed: {old!r} is gone; update this test's variant"
    path = directory / "Dockerfile"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_a_build_context_without_the_core_fails_at_its_copy(
    assembler: ImageAssembler, tmp_path: Path
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy2(DOCKERFILE, dockerfile)
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8")
    assert "!factory_core/\n" in ignore
    # Docker prefers `<Dockerfile>.dockerignore` to the context's own: the variant drops factory_core.
    Path(f"{dockerfile}.dockerignore").write_text(ignore.replace("!factory_core/\n", ""))
    with pytest.raises(AssemblyError, match=r"COPY factory_core/ .* is not in the build context"):
        assembler.assemble(dockerfile, REPO)


def test_a_simulator_importing_what_the_image_lacks_fails_to_start(
    assembler: ImageAssembler, tmp_path: Path, simulator_container: dict[str, Any], pki: Pki
) -> None:
    # A context where the simulator also imports local_stack, which .dockerignore keeps out.
    context = tmp_path / "context"
    for name in (".dockerignore", "pyproject.toml", "uv.lock"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, context / name)
    for package in ("simulator", "factory_core"):
        shutil.copytree(REPO / package, context / package, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "local_stack").mkdir()
    (context / "local_stack" / "__init__.py").write_text("")
    main = context / "simulator" / "__main__.py"
    main.write_text(main.read_text().replace("\nimport os\n", "\nimport os\n\nimport local_stack\n", 1))
    image = assembler.assemble(context / "simulator" / "Dockerfile", context)
    _, problems = import_problems(image, context)
    assert problems == ["simulator/__main__.py imports local_stack, which is not in the image's /app"]
    assert_fails_to_start(image, simulator_container, pki, "No module named 'local_stack'")


def test_a_prune_list_that_drops_a_needed_package_fails_to_start(
    assembler: ImageAssembler, tmp_path: Path, simulator_container: dict[str, Any], pki: Pki
) -> None:
    dockerfile = variant_dockerfile(tmp_path, "--prune boto3 ", "--prune boto3 --prune orjson ")
    image = assembler.assemble(dockerfile, REPO)
    _, problems = import_problems(image, REPO)
    assert problems and all(problem.endswith("imports orjson, which the image's environment lacks")
                            for problem in problems), problems
    assert_fails_to_start(image, simulator_container, pki, "No module named 'orjson'")


def assert_fails_to_start(
    image: AssembledImage, container: dict[str, Any], pki: Pki, message: str
) -> None:
    """The entrypoint, as ECS starts it, ends with `message` before it connects anywhere."""
    environment = ecs_environment(
        container, pki,
        {"FACTORY_ENDPOINT": "127.0.0.1", "FACTORY_PORT": str(free_port()), "FACTORY_METRICS_PORT": "0"},
    )
    result = image.run(image.entrypoint, environment, timeout_s=START_TIMEOUT_S)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
