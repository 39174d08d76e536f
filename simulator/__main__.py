"""`python -m simulator`: run one site live, write a dry run, or check a config file.

Exit codes: 0 ok, 1 the run failed, 2 bad config or input (one line on stderr, no traceback).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from factory_core.errors import OperationFailed, UsageError


def check_config(argv: Sequence[str]) -> str:
    """Validate config file, environment, flags and (if given) certificates; return a summary line."""
    from factory_core.connection_plan import plan_connections
    from simulator.config_loader import load_run_config
    from simulator.connection_settings import materialize_pem_env, validate_connection

    config = load_run_config(argv, os.environ)
    fleet = config.fleet
    connection = materialize_pem_env(config.connection, dict(os.environ))
    plan = plan_connections(fleet, config.site_index, connection.client_id_prefix,
                            connections=connection.connections)
    certificate = ""
    if connection.endpoint or connection.cert_path or connection.key_path or connection.cert_dir:
        report = validate_connection(connection, plan.client_ids)
        certificate = f"; certificate {report.subject} valid until {report.not_after:%Y-%m-%d}"
    return (
        f"ok: {config.check_config}: {plan.site}, {fleet.lines_per_site} line(s) x"
        f" {sum(fleet.machines_per_line.values())} machines = {plan.machines} machines,"
        f" {plan.messages_per_second:g} msg/s over {plan.connections} connection(s),"
        f" engine {fleet.engine.value}, QoS {fleet.qos}{certificate}"
    )


def dry_run(argv: Sequence[str]) -> None:
    from simulator import dry_run as dry
    from simulator.config_loader import load_run_config

    config = load_run_config(argv, os.environ)
    if config.count is not None or config.max_rate:
        raise UsageError("--count and --max-rate apply to live runs; with --dry-run use --duration")
    start = config.start_epoch_ms if config.start_epoch_ms is not None else dry.DEFAULT_START_EPOCH_MS
    try:
        dry.write(sys.stdout.buffer, config.fleet, config.site_index, config.duration_s or 3600.0, start)
    except BrokenPipeError:
        # `| head` closed the pipe: not an error. Point stdout at /dev/null so the interpreter's
        # final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def run(argv: Sequence[str]) -> int:
    from simulator.config_loader import load_run_config
    from simulator.connection_settings import materialize_pem_env
    from simulator.runner import run_live

    config = load_run_config(argv, os.environ)
    connection = materialize_pem_env(config.connection, dict(os.environ))
    from dataclasses import replace

    run_live(replace(config, connection=connection))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--check-config" in args or any(a.startswith("--check-config=") for a in args):
            print(check_config(args), flush=True)
            return 0
        if "--dry-run" in args:
            dry_run(args)
            return 0
        return run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except OperationFailed as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
