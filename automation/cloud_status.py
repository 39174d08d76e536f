"""`status` of a cloud stack: its last update, simulators, certificate generations, and live ECS services."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from automation import preflight
from automation.fleet_status import (
    MONITORING_SERVICE_OUTPUT,
    SIMULATOR_SERVICES_OUTPUT,
    ServiceState,
    read_services,
    service_names,
)
from automation.stack_context import (
    StackContext,
    open_stack,
    outputs_of,
)
from automation.stack_port import LastUpdate as PortLastUpdate
from factory_core import cert_rotation
from factory_core.stack_file import CERT_GENERATIONS_KEY, ROTATION_KEY, SIMULATOR_COUNT_KEY, config_int
from factory_core.verb_results import CloudService, CloudStatus, LastUpdate


def _timestamp(text: str | None) -> dt.datetime | None:
    """Pulumi's update times (ISO text, sometimes without a zone: UTC) as aware datetimes."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _last_update(last: PortLastUpdate | None) -> LastUpdate | None:
    if last is None:
        return None
    return LastUpdate(last.kind, last.result, _timestamp(last.started), _timestamp(last.ended))


def cloud_service(state: ServiceState) -> CloudService:
    return CloudService(state.name, state.desired, state.running, state.pending, state.rollout, state.steady)


def live_services(
    outputs: Mapping[str, Any], config_region: str | None, *, simulators_only: bool = False
) -> tuple[list[ServiceState], str | None]:
    """ECS desired/running counts of the stack's services, or a note saying why they are not shown."""
    keys = (
        (SIMULATOR_SERVICES_OUTPUT,)
        if simulators_only
        else (MONITORING_SERVICE_OUTPUT, SIMULATOR_SERVICES_OUTPUT)
    )
    cluster, names = outputs.get("clusterName"), service_names(outputs, keys)
    if not isinstance(cluster, str) or not names:
        return [], None
    region = (
        outputs.get("region")
        if isinstance(outputs.get("region"), str)
        else preflight.aws_region(config_region)
    )
    if region is None:
        return [], "no AWS region known; live service state not read"
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if boto3.session.Session().get_credentials() is None:
        return [], "no AWS credentials; live service state not read"
    try:
        return read_services(cluster, names, region), None
    except (BotoCoreError, ClientError) as exc:
        return [], f"could not read ECS services: {exc}"


def stack_status(context: StackContext) -> CloudStatus:
    port = open_stack(context, create=False)
    config = port.get_all_config()
    generations = cert_rotation.parse_generations(config.get(CERT_GENERATIONS_KEY))
    record = cert_rotation.parse_record(config.get(ROTATION_KEY))
    outputs = outputs_of(port)
    services, services_note = live_services(outputs, context.region)
    return CloudStatus(
        stack=context.name,
        backend=context.backend.backend_url or "(current `pulumi login`)",
        secrets_provider=context.backend.secrets_provider or "(stack default)",
        last_update=_last_update(port.last_update()),
        simulators=config_int(config, SIMULATOR_COUNT_KEY, 0, context.source)
        if SIMULATOR_COUNT_KEY in config
        else None,
        certificate_generation=cert_rotation.current_generation(generations).name,
        certificate_generations=tuple(cert_rotation.dump_generations(generations)),
        rotation=None if record is None else cert_rotation.dump_record(record),
        outputs=outputs,
        services=tuple(cloud_service(service) for service in services),
        services_note=services_note,
    )
