"""The AWS platform of the factory simulator: read the stack's settings once, then wire the components.

devices (IoT things, certs) --MQTT/TLS--> AWS IoT Core --topic rule--> archive (S3 | Firehose->S3)
simulators (ECS, one service per site) <--scrape (Cloud Map DNS, one name per site)-- monitoring
internet --allowed CIDRs--> ALB --/prometheus/*--> Prometheus, --/*--> Grafana
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Pulumi runs this file from infra/ (Pulumi.yaml `main: infra/`); the packages live at the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pulumi  # noqa: E402
import pulumi_aws as aws  # noqa: E402

from factory_core import archive_views, cert_rotation  # noqa: E402
from factory_core.archive_modes import archive_rule_name, ingest_prefix  # noqa: E402
from factory_core.fleet import topic_prefix  # noqa: E402
from infra import iam  # noqa: E402
from infra.components.alerting import AlertTopic, AlertTopicArgs, Subscriber  # noqa: E402
from infra.components.analytics import ArchiveAnalytics, ArchiveAnalyticsArgs  # noqa: E402
from infra.components.archive import TelemetryArchive, TelemetryArchiveArgs  # noqa: E402
from infra.components.cluster import ContainerPlatform, ContainerPlatformArgs  # noqa: E402
from infra.components.firewall import Firewall, FirewallArgs  # noqa: E402
from infra.components.image import SimulatorImage, SimulatorImageArgs, ecr_repository_arn  # noqa: E402
from infra.components.image_cache import ImageCache, ImageCacheArgs, ImageSources, direct_sources  # noqa: E402
from infra.components.iot import DeviceFleet, DeviceFleetArgs, GenerationSpec  # noqa: E402
from infra.components.loadbalancer import (  # noqa: E402
    PublicLoadBalancer,
    PublicLoadBalancerArgs,
    listener_ports,
)
from infra.components.monitoring import (  # noqa: E402
    GRAFANA_UID,
    PROMETHEUS_UID,
    ConfigLayout,
    MonitoringService,
    MonitoringServiceArgs,
    SmtpSecret,
)
from infra.components.monitoring_history import (  # noqa: E402
    GRAFANA_VOLUME,
    PROMETHEUS_VOLUME,
    HistoryUser,
    MonitoringHistory,
    MonitoringHistoryArgs,
)
from infra.components.network import Network, NetworkArgs  # noqa: E402
from infra.components.secret_rotation import SecretRotation, SecretRotationArgs, SesUser  # noqa: E402
from infra.components.simulators import METRICS_PORT, SimulatorFleet, SimulatorFleetArgs  # noqa: E402
from infra.components.storage import GlacierLifecycle, SecureBucket, SecureBucketArgs  # noqa: E402
from infra.components.waf import WebFirewall, WebFirewallArgs  # noqa: E402
from infra.settings import (  # noqa: E402
    PROJECT,
    SETTINGS_OUTPUT,
    ConfigError,
    StackSettings,
    settings_from_pulumi,
)
from observability import config_bundle as bundle  # noqa: E402


def load_monitoring_bundle(
    discovery_dns_names: list[str],
    metrics_port: int,
    scrape_interval_s: int,
    settings: StackSettings | None = None,
) -> tuple[dict[str, str], ConfigLayout]:
    """Prometheus config, alert rules, Alertmanager routing, Grafana provisioning and dashboards
    rendered for the cloud, and where the monitoring task must mount them (both defined by
    observability/config_bundle.py). `settings` gives Alertmanager its channels.

    The files depend on the discovery names (one per site), so scaling the fleet changes the
    bundle's hash and rolls the monitoring service onto the new scrape config.
    """
    smtp = settings.smtp if settings else None
    channels = bundle.cloud_alert_channels(
        smtp_host=smtp.host if smtp else None,
        smtp_from=smtp.from_address if smtp else None,
        smtp_to=[address.strip() for address in smtp.to_addresses.split(",")] if smtp else (),
        webhook_url=settings.alerting.webhook_url if settings else None,
        sns_region=settings.region if settings and settings.alerting.sns_subscriptions else None,
    )
    files = dict(
        bundle.cloud_bundle(
            discovery_dns_names=discovery_dns_names,
            metrics_port=metrics_port,
            scrape_interval_s=scrape_interval_s,
            alert_channels=channels,
        )
    )
    layout = ConfigLayout(
        directories={
            bundle.PROMETHEUS_PREFIX: bundle.PROMETHEUS_CONFIG_DIR,
            bundle.GRAFANA_PREFIX: bundle.GRAFANA_CONFIG_DIR,
            bundle.ALERTMANAGER_PREFIX: bundle.ALERTMANAGER_CONFIG_DIR,
        },
        prometheus_args=tuple(bundle.CLOUD_PROMETHEUS_ARGS),
        grafana_environment=dict(bundle.CLOUD_GRAFANA_ENVIRONMENT),
        alert_email_env=bundle.grafana_provisioning.ALERT_EMAIL_ENV,
        alertmanager_placeholders=dict(bundle.CLOUD_ALERTMANAGER_PLACEHOLDERS),
        alertmanager_run_dir=bundle.CLOUD_ALERTMANAGER_RUN_DIR,
        smtp_password_file=bundle.CLOUD_SMTP_PASSWORD_FILE,
    )
    return files, layout


def hardening_rotations(
    settings: StackSettings,
    account: iam.AccountContext,
    platform: ContainerPlatform,
    monitoring: MonitoringService,
    smtp: SmtpSecret | None,
    opts: pulumi.ResourceOptions,
) -> dict[str, SecretRotation]:
    """Secrets Manager rotation of Grafana's admin password, and of SES SMTP credentials when the stack
    names their IAM user (iotfactory:secretRotation, iotfactory:smtp.sesIamUser)."""
    if not settings.secret_rotation.enabled:
        return {}
    targets: dict[str, tuple[pulumi.Input[str], SesUser | None]] = {
        "grafana-admin": (monitoring.admin_secret.arn, None)
    }
    ses = settings.smtp
    if smtp is not None and ses is not None and ses.ses_iam_user and ses.ses_region:
        targets["ses-smtp"] = (smtp.secret_arn, SesUser(ses.ses_iam_user, ses.ses_region))
    return {
        kind: SecretRotation(
            f"rotation-{kind}",
            SecretRotationArgs(
                account=account,
                kind=kind,
                function_name=f"{settings.name_prefix}-rotate-{kind}",
                secret_arn=secret_arn,
                schedule=settings.secret_rotation.schedule,
                monitoring_cluster=platform.cluster_name,
                monitoring_service=monitoring.service_name,
                log_retention_days=settings.log_retention_days,
                ses_user=ses_user,
            ),
            opts=opts,
        )
        for kind, (secret_arn, ses_user) in targets.items()
    }


def main() -> None:
    try:
        settings: StackSettings = settings_from_pulumi()
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None

    provider = aws.Provider(
        "aws",
        region=settings.region,
        default_tags={"tags": settings.tags},
        allowed_account_ids=[settings.account_id] if settings.account_id else None,
    )
    uses_provider = pulumi.ResourceOptions(providers={"aws": provider})
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    account = iam.AccountContext(
        partition=aws.get_partition_output(opts=invoke).partition,
        region=settings.region,
        account_id=aws.get_caller_identity_output(opts=invoke).account_id,
    )
    stack = settings.stack
    logs = f"/{PROJECT}/{stack}"
    secret_recovery_days = 7 if settings.production else 0
    rule_name = archive_rule_name(PROJECT, stack)
    # basic-ingest: devices publish to the rule's own topic, and may publish nowhere else.
    publish_prefix = ingest_prefix(settings.archive_mode, rule_name)

    network = Network(
        "network",
        NetworkArgs(
            vpc_cidr=settings.network.vpc_cidr,
            availability_zones=settings.network.availability_zones,
            private_subnets=settings.network.private_subnets,
            region=settings.region,
        ),
        opts=uses_provider,
    )
    firewall = Firewall(
        "firewall",
        FirewallArgs(
            vpc_id=network.vpc_id,
            allowed_cidrs=settings.allowed_cidrs,
            listener_ports=listener_ports(settings.certificate_arn),
            metrics_port=METRICS_PORT,
            smtp_port=settings.smtp.port if settings.smtp else None,
        ),
        opts=uses_provider,
    )
    config_bucket = SecureBucket(
        "config",
        SecureBucketArgs(
            account=account, purpose="monitoring config", force_destroy=settings.force_destroy, versioned=True
        ),
        opts=uses_provider,
    )
    archive = TelemetryArchive(
        "archive",
        TelemetryArchiveArgs(
            account=account,
            mode=settings.archive_mode,
            rule_name=rule_name,
            # Only this stack's namespace: dev's rule never archives prod's messages.
            topic_root=topic_prefix(settings.topic_namespace),
            log_group_prefix=logs,
            log_retention_days=settings.log_retention_days,
            lifecycle=GlacierLifecycle(
                settings.archive_lifecycle.glacier_after_days, settings.archive_lifecycle.expire_after_days
            ),
            force_destroy=settings.force_destroy,
            buffer_size_mb=settings.firehose.size_mb,
            buffer_interval_s=settings.firehose.interval_s,
        ),
        opts=uses_provider,
    )
    # Athena over the archive: the views `query --stack local` runs on DuckDB (docs/cold-path.md).
    analytics = ArchiveAnalytics(
        "analytics",
        ArchiveAnalyticsArgs(
            account=account,
            archive_bucket_name=archive.bucket_name,
            archive_bucket_arn=archive.bucket.bucket_arn,
            mode=settings.archive_mode,
            database_name=re.sub(r"[^a-z0-9_]", "_", f"{PROJECT}_{stack}".lower()),
            workgroup_name=f"{settings.name_prefix}-archive",
            force_destroy=settings.force_destroy,
        ),
        opts=uses_provider,
    )
    devices = DeviceFleet(
        "devices",
        DeviceFleetArgs(
            account=account,
            sites=settings.sites,
            client_id_prefix=settings.client_id_prefix,
            generations=tuple(GenerationSpec(g.name, g.active) for g in settings.cert_generations),
            serving_generation=settings.serving_generation.name,
            topic_namespace=settings.topic_namespace,
            secret_recovery_days=secret_recovery_days,
            publish_prefix=publish_prefix,
        ),
        opts=uses_provider,
    )
    image = SimulatorImage(
        "simulator-image",
        SimulatorImageArgs(
            repository_name=f"{settings.name_prefix}/simulator",
            context_dir=REPO_ROOT,
            dockerfile=REPO_ROOT / "simulator" / "Dockerfile",
            force_delete=settings.force_destroy,
            prebuilt_image=settings.simulator_image,
        ),
        opts=uses_provider,
    )
    platform = ContainerPlatform(
        "platform",
        ContainerPlatformArgs(
            cluster_name=settings.name_prefix,
            vpc_id=network.vpc_id,
            namespace=f"{stack}.{PROJECT}.internal",
            container_insights=settings.container_insights,
            sites=settings.sites,
        ),
        opts=uses_provider,
    )
    web = PublicLoadBalancer(
        "web",
        PublicLoadBalancerArgs(
            vpc_id=network.vpc_id,
            subnet_ids=network.public_subnet_ids,
            security_group_id=firewall.load_balancer_id,
            certificate_arn=settings.certificate_arn,
            domain_name=settings.domain_name,
            deletion_protection=settings.production,
        ),
        opts=uses_provider,
    )

    smtp = None
    if settings.smtp:
        existing = aws.secretsmanager.get_secret_output(name=settings.smtp.secret_name, opts=invoke)
        smtp = SmtpSecret(
            secret_arn=existing.arn,
            host=settings.smtp.host,
            from_address=settings.smtp.from_address,
            to_addresses=settings.smtp.to_addresses,
        )
    images = image_sources(settings, account, invoke, uses_provider)
    # Every site's name, in site order: Prometheus scrapes each one (see docs/infra.md, Compute).
    discovery_names = [platform.discovery_dns_names[site] for site in settings.sites]
    config_files, config_layout = load_monitoring_bundle(
        discovery_names, METRICS_PORT, settings.scrape_interval_s, settings
    )
    alert_topic = None
    subscriptions = settings.alerting.sns_subscriptions
    if subscriptions:
        alert_topic = AlertTopic(
            "alerts",
            AlertTopicArgs(
                account=account,
                topic_name=f"{settings.name_prefix}-alerts",
                subscribers=tuple(Subscriber(s.protocol, s.endpoint) for s in subscriptions),
            ),
            opts=uses_provider,
        )
    history = None
    if settings.monitoring_history.efs:
        history = MonitoringHistory(
            "monitoring-history",
            MonitoringHistoryArgs(
                account=account,
                name_prefix=settings.name_prefix,
                vpc_id=network.vpc_id,
                subnet_ids=network.task_subnet_ids,
                monitoring_security_group_id=firewall.monitoring_id,
                users=(
                    HistoryUser(PROMETHEUS_VOLUME, int(PROMETHEUS_UID), int(PROMETHEUS_UID), "/prometheus"),
                    HistoryUser(GRAFANA_VOLUME, int(GRAFANA_UID), 0, "/grafana"),
                ),
                backup=settings.efs_backup,
                key_deletion_days=30 if settings.production else 7,
            ),
            opts=uses_provider,
        )
    monitoring = MonitoringService(
        "monitoring",
        MonitoringServiceArgs(
            account=account,
            cluster_arn=platform.cluster_arn,
            subnet_ids=network.task_subnet_ids,
            security_group_id=firewall.monitoring_id,
            assign_public_ip=network.tasks_need_public_ip,
            config_bucket_name=config_bucket.bucket_name,
            config_files=config_files,
            layout=config_layout,
            prometheus_target_group_arn=web.prometheus_targets.arn,
            grafana_target_group_arn=web.grafana_targets.arn,
            base_url=web.base_url,
            https=settings.certificate_arn is not None,
            prometheus_image=images.references["prometheus"],
            grafana_image=images.references["grafana"],
            config_init_image=images.references["configInit"],
            alertmanager_image=images.references["alertmanager"],
            cpu=settings.monitoring_task.cpu,
            memory=settings.monitoring_task.memory,
            log_group_name=f"{logs}/monitoring",
            log_retention_days=settings.log_retention_days,
            family=f"{settings.name_prefix}-monitoring",
            smtp=smtp,
            alert_topic=alert_topic,
            secret_recovery_days=secret_recovery_days,
            depends_on=tuple(web.rules),
            execution_statements=images.pull_statements,  # empty unless the cache is on
            image_sources=tuple(images.rules),
            history=history.volumes if history else None,
        ),
        opts=uses_provider,
    )
    if history:
        history.admit(monitoring.task_role_arn)
    rotations = hardening_rotations(settings, account, platform, monitoring, smtp, uses_provider)
    firewall_acl = None
    if settings.waf_enabled:
        firewall_acl = WebFirewall(
            "waf",
            WebFirewallArgs(
                account=account,
                name_prefix=settings.name_prefix,
                load_balancer_arn=web.load_balancer.arn,
                rate_limit=settings.waf.rate_limit,
                log_retention_days=settings.log_retention_days,
            ),
            opts=uses_provider,
        )

    pull_repositories: list[pulumi.Input[str]] = list(image.pull_repository_arns)
    if settings.simulator_image:
        external = ecr_repository_arn(settings.simulator_image)
        pull_repositories = [external] if external else []
    iot_endpoint = aws.iot.get_endpoint_output(endpoint_type="iot:Data-ATS", opts=invoke).endpoint_address
    simulators = SimulatorFleet(
        "simulators",
        SimulatorFleetArgs(
            account=account,
            cluster_arn=platform.cluster_arn,
            subnet_ids=network.task_subnet_ids,
            security_group_id=firewall.simulators_id,
            assign_public_ip=network.tasks_need_public_ip,
            discovery_service_arns={
                site: service.arn for site, service in platform.discovery_services.items()
            },
            image_ref=image.image_ref,
            pull_repository_arns=pull_repositories,
            iot_endpoint=iot_endpoint,
            fleet_json=settings.task_fleet.model_dump_json(),
            shards=devices.shards,
            serving_generation=settings.serving_generation.name,
            cpu=settings.simulator_task.cpu,
            memory=settings.simulator_task.memory,
            log_group_name=f"{logs}/simulators",
            log_retention_days=settings.log_retention_days,
            family_prefix=f"{settings.name_prefix}-simulator",
            topic_prefix=publish_prefix,
        ),
        opts=uses_provider,
    )

    pulumi.export("grafanaUrl", web.grafana_url)
    pulumi.export("prometheusUrl", web.prometheus_url)
    pulumi.export("loadBalancerDnsName", web.dns_name)
    pulumi.export("grafanaAdminUser", "admin")
    pulumi.export("grafanaAdminSecretArn", monitoring.admin_secret.arn)
    pulumi.export("iotDataEndpoint", iot_endpoint)
    pulumi.export("archiveBucket", archive.bucket_name)
    pulumi.export("archiveMode", settings.archive_mode)
    pulumi.export("archiveRuleName", archive.rule.name)
    pulumi.export("configBucket", config_bucket.bucket_name)
    pulumi.export("configSha256", monitoring.config_sha256)
    pulumi.export("alertTopicArn", alert_topic.topic_arn if alert_topic else None)
    pulumi.export("clusterName", platform.cluster_name)
    pulumi.export("monitoringServiceName", monitoring.service_name)
    pulumi.export("simulatorServiceNames", simulators.service_names)
    pulumi.export("simulatorCount", settings.simulator_count)
    pulumi.export(
        "shards",
        {
            shard.site: {
                "thingName": shard.thing_name,
                "clientIdPrefix": f"{shard.client_id_prefix}{shard.site}-c",
            }
            for shard in devices.shards.values()
        },
    )
    pulumi.export("certGenerations", cert_rotation.dump_generations(settings.cert_generations))
    pulumi.export("servingCertGeneration", settings.serving_generation.name)
    pulumi.export("discoveryDnsNames", platform.discovery_dns_names)
    pulumi.export("ecrRepositoryUrl", image.repository_url)
    pulumi.export("simulatorImage", image.image_ref)
    pulumi.export(
        "logGroups",
        {
            "simulators": simulators.log_group.name,
            "monitoring": monitoring.log_group.name,
            "iotRuleErrors": archive.error_log_group.name,
        },
    )
    pulumi.export("region", settings.region)
    # Read by rotate-certs (ECS must run these task definitions before a generation is deactivated)
    # and by `up`'s stale-checkout check, `drift` and `doctor` (automation/).
    pulumi.export("simulatorSites", simulators.site_deployments)
    pulumi.export("topicPrefix", topic_prefix(settings.topic_namespace))
    pulumi.export("imageReferences", images.references)
    pulumi.export("webAclArn", firewall_acl.web_acl_arn if firewall_acl else None)
    pulumi.export("monitoringHistoryFileSystemId", history.file_system.id if history else None)
    pulumi.export(
        "secretRotationFunctions", {kind: rotation.function.name for kind, rotation in rotations.items()}
    )
    # What `up` and `scale` price the change of monthly cost from (automation/cost_report.py).
    pulumi.export(SETTINGS_OUTPUT, settings.model_dump(mode="json", by_alias=True))
    pulumi.export(archive_views.DATABASE_OUTPUT, analytics.database.name)
    pulumi.export(archive_views.WORKGROUP_OUTPUT, analytics.workgroup.name)
    pulumi.export(archive_views.RESULTS_BUCKET_OUTPUT, analytics.results.bucket_name)
    pulumi.export(archive_views.QUERY_ROLE_OUTPUT, analytics.query_role.arn)


def image_sources(
    settings: StackSettings,
    account: iam.AccountContext,
    invoke: pulumi.InvokeOutputOptions,
    uses_provider: pulumi.ResourceOptions,
) -> ImageSources:
    """The monitoring images, through this account's pull-through cache when the stack enables it."""
    images = settings.images.model_dump(by_alias=True)
    if not settings.image_cache.enabled or settings.ecr_registry is None:
        return direct_sources(images)
    secret_name = settings.image_cache.docker_hub_secret_name
    secret_arn = (
        aws.secretsmanager.get_secret_output(name=secret_name, opts=invoke).arn if secret_name else None
    )
    return ImageCache(
        "image-cache",
        ImageCacheArgs(account, settings.ecr_registry, images, docker_hub_secret_arn=secret_arn),
        opts=uses_provider,
    ).sources


main()
