"""Alertmanager's container in the monitoring task: it fills the bundle's placeholders from its
environment, writes the SMTP password to a file only it can read, and runs Alertmanager on that.

The config in the bucket holds no secret: Alertmanager reads the SMTP password from a file
(`auth_password_file`) and has no such option for the user name or anything else, so the container
substitutes them at start (observability.config_bundle.CLOUD_ALERTMANAGER_PLACEHOLDERS).
"""

from __future__ import annotations

from collections.abc import Mapping

from infra.components import fargate

CONTAINER = "alertmanager"
PORT = 9093
UID = "65534"  # "nobody", the user the Alertmanager image runs as
DATA_DIR = "/alertmanager"
DATA_VOLUME = "alertmanager-data"
RUN_VOLUME = "alertmanager-run"
CONFIG_FILE = "alertmanager.yml"
# Characters a value may have to be substituted into the config safely (no sed or YAML syntax).
_SAFE_VALUE = "A-Za-z0-9@._+=:/-"


def startup_script(config_dir: str, run_dir: str, placeholders: Mapping[str, str], password_file: str) -> str:
    """Shell (busybox) run as the container's command: check, substitute, write the secret, exec."""
    lines = ["set -eu", "umask 077"]
    substitutions = []
    for placeholder, variable in sorted(placeholders.items()):
        lines.append(
            f'case "${{{variable}:-}}" in *[!{_SAFE_VALUE}]*) '
            f'echo "{variable} holds characters Alertmanager\'s config cannot take" >&2; exit 1;; esac'
        )
        substitutions.append(f'-e "s|{placeholder}|${{{variable}:-}}|g"')
    lines += [
        f'if [ -n "${{SMTP_PASSWORD:-}}" ]; then printf "%s" "$SMTP_PASSWORD" > {password_file}; fi',
        f"sed {' '.join(substitutions)} {config_dir}/{CONFIG_FILE} > {run_dir}/{CONFIG_FILE}",
        "unset SMTP_PASSWORD",
        "exec /bin/alertmanager"
        f" --config.file={run_dir}/{CONFIG_FILE}"
        f" --storage.path={DATA_DIR}"
        f" --web.listen-address=:{PORT}"
        # One Alertmanager per task, no cluster: the default would listen for peers on :9094.
        " --cluster.listen-address=",
    ]
    return "\n".join(lines)


def container(
    *,
    image: str,
    config_volume: str,
    config_dir: str,
    run_dir: str,
    script: str,
    environment: Mapping[str, str],
    secrets: list[dict[str, str]],
    log_configuration: dict[str, object],
    depends_on: list[dict[str, str]],
) -> dict[str, object]:
    return {
        "name": CONTAINER,
        "image": image,
        "essential": True,
        "user": f"{UID}:{UID}",
        "readonlyRootFilesystem": True,
        "entryPoint": ["/bin/sh", "-c"],
        "command": [script],
        "environment": fargate.environment(environment),
        "secrets": secrets,
        # Reached by Prometheus and Grafana on localhost only; the load balancer does not route to it.
        "portMappings": [{"containerPort": PORT, "protocol": "tcp"}],
        "dependsOn": depends_on,
        "mountPoints": [
            fargate.mount(config_volume, config_dir, read_only=True),
            fargate.mount(DATA_VOLUME, DATA_DIR),
            fargate.mount(RUN_VOLUME, run_dir),
        ],
        "healthCheck": fargate.health_check(
            ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PORT}/-/healthy"],
            interval=15,
            start_period=30,
        ),
        "linuxParameters": fargate.HARDENED_LINUX,
        "logConfiguration": log_configuration,
    }
