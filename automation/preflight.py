"""Checks that run before any cloud work, so a missing tool or credential costs one line, not a traceback."""

from __future__ import annotations

import os
import shutil

from factory_core.errors import UsageError

PULUMI_INSTALL_HINT = (
    "install the Pulumi CLI (https://www.pulumi.com/docs/iac/download-install/, e.g. "
    "`curl -fsSL https://get.pulumi.com | sh` or `brew install pulumi`) and make sure `pulumi` is on PATH"
)


def require_pulumi_cli() -> str:
    """Path of the `pulumi` binary; the Automation API drives it and fails obscurely without it."""
    path = shutil.which("pulumi")
    if path is None:
        raise UsageError(f"the Pulumi CLI was not found on PATH; {PULUMI_INSTALL_HINT}")
    return path


def aws_region(stack_config_region: str | None) -> str | None:
    """The region a stack deploys to: its `aws:region`, else the environment's default region."""
    return stack_config_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def require_aws_credentials(purpose: str) -> None:
    """Fail before any update starts when boto3's credential chain finds nothing."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        credentials = boto3.session.Session().get_credentials()
    except BotoCoreError as exc:
        raise UsageError(f"AWS credentials could not be loaded ({exc}); fix the AWS profile") from None
    if credentials is None:
        raise UsageError(
            f"no AWS credentials found; {purpose} needs them: run `aws sso login` or `aws configure`, "
            "or set AWS_PROFILE (in CI: assume a role with OIDC)"
        )
