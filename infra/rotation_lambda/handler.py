"""Secrets Manager rotation of the platform's passwords: Grafana's admin password, SES SMTP credentials.

Secrets Manager calls `lambda_handler` four times per rotation, with the secret's ARN, a version id
(`ClientRequestToken`) and the step, following AWS's rotation template:

1. createSecret: make the new value and store it as that version, staged AWSPENDING. Idempotent:
   if the version already exists (a retried call), nothing is made again.
2. setSecret: put the new value into the service that checks it.
3. testSecret: check the new value is usable.
4. finishSecret: move AWSCURRENT to the new version (AWSPREVIOUS follows the old one) and take
   AWSPENDING off it, then roll the monitoring service, whose containers read the secret at start.

What each kind of secret does at steps 1-3 (`ROTATION_KIND`):

- `grafana-admin` (a plain string): 32 random letters and digits. Grafana is not reachable from
  here (the Lambda runs outside the VPC, and the load balancer admits only the operators' addresses),
  so setSecret changes nothing in Grafana: the monitoring task resets its admin password from
  AWSCURRENT at every start, and finishSecret starts a new one. testSecret checks the format only.
- `ses-smtp` (JSON `{"username", "password", ...}`): SES SMTP credentials are an IAM user's access key
  (`SES_IAM_USER`) with the password derived from its secret key. createSecret deletes the user's
  keys other than the current one (IAM allows two) and creates a new key; setSecret has nothing to do
  (IAM activates the key at once). testSecret checks the format and that IAM lists the key as Active;
  it does not log in to SES (no network path to SMTP from here, and no mail should be sent).

Runs on the Lambda Python runtime with its bundled boto3; nothing else is imported, so this file is
the whole package (`infra/components/secret_rotation.py`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import string
from collections.abc import Callable, Mapping
from typing import Any

import boto3

log = logging.getLogger("rotation")
log.setLevel(logging.INFO)

CURRENT, PENDING = "AWSCURRENT", "AWSPENDING"
GRAFANA_ADMIN, SES_SMTP = "grafana-admin", "ses-smtp"
PASSWORD_LENGTH = 32
PASSWORD_ALPHABET = string.ascii_letters + string.digits
ACCESS_KEY_ID = re.compile(r"^AKIA[A-Z0-9]{16}$")
# SES SMTP password: version byte 4, then HMAC-SHA256 chained over these (AWS SES developer guide,
# "Obtaining Amazon SES SMTP credentials by converting existing AWS credentials").
SES_SIGNING_DATE = "11111111"
SES_SIGNING_SERVICE = "ses"
SES_SIGNING_TERMINAL = "aws4_request"
SES_SIGNING_MESSAGE = "SendRawEmail"
SES_SIGNING_VERSION = 0x04


class RotationError(ValueError):
    """The event or the secret is not in a state this step can work from."""


# --- the parts that differ per kind of secret ---------------------------------------------------


def new_grafana_password(current: str, clients: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def test_grafana_password(pending: str, clients: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    if len(pending) != PASSWORD_LENGTH or any(char not in PASSWORD_ALPHABET for char in pending):
        raise RotationError(f"pending Grafana password is not {PASSWORD_LENGTH} letters and digits")


def ses_smtp_password(secret_access_key: str, region: str) -> str:
    """The SMTP password SES accepts for an IAM access key in `region` (AWS's published derivation)."""
    signature = (f"AWS4{secret_access_key}").encode()
    for part in (SES_SIGNING_DATE, region, SES_SIGNING_SERVICE, SES_SIGNING_TERMINAL, SES_SIGNING_MESSAGE):
        signature = hmac.new(signature, part.encode(), hashlib.sha256).digest()
    return base64.b64encode(bytes([SES_SIGNING_VERSION]) + signature).decode()


def new_ses_credentials(current: str, clients: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    iam, user = clients["iam"], environ["SES_IAM_USER"]
    document = json.loads(current)
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    for key in keys:
        # IAM allows two keys: drop the one the previous rotation left behind (never the current one).
        if key["AccessKeyId"] != document.get("username"):
            iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            log.info("deleted access key %s of %s (superseded)", key["AccessKeyId"], user)
    created = iam.create_access_key(UserName=user)["AccessKey"]
    password = ses_smtp_password(created["SecretAccessKey"], environ["SES_REGION"])
    log.info("created access key %s of %s", created["AccessKeyId"], user)
    return json.dumps({**document, "username": created["AccessKeyId"], "password": password})


def test_ses_credentials(pending: str, clients: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    document = json.loads(pending)
    username, password = document.get("username", ""), document.get("password", "")
    if not ACCESS_KEY_ID.match(username):
        raise RotationError("pending SMTP username is not an IAM access key id")
    try:
        decoded = base64.b64decode(password, validate=True)
    except ValueError:
        raise RotationError("pending SMTP password is not base64") from None
    if len(decoded) != 33 or decoded[0] != SES_SIGNING_VERSION:
        raise RotationError("pending SMTP password is not an SES SMTP password (version 4)")
    keys = clients["iam"].list_access_keys(UserName=environ["SES_IAM_USER"])["AccessKeyMetadata"]
    if not any(key["AccessKeyId"] == username and key["Status"] == "Active" for key in keys):
        raise RotationError(f"access key {username} is not an active key of {environ['SES_IAM_USER']}")


Maker = Callable[[str, Mapping[str, Any], Mapping[str, str]], str]
Checker = Callable[[str, Mapping[str, Any], Mapping[str, str]], None]
KINDS: dict[str, tuple[Maker, Checker]] = {
    GRAFANA_ADMIN: (new_grafana_password, test_grafana_password),
    SES_SMTP: (new_ses_credentials, test_ses_credentials),
}


# --- the four steps (AWS's rotation template) ---------------------------------------------------


def lambda_handler(event: Mapping[str, str], context: object) -> None:
    environ = dict(os.environ)
    clients = {name: boto3.client(name) for name in ("secretsmanager", "iam", "ecs")}
    rotate(event, clients, environ)


def rotate(event: Mapping[str, str], clients: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """One step of one rotation; `clients` are boto3 clients by service name (tests pass moto's)."""
    arn, token, step = event["SecretId"], event["ClientRequestToken"], event["Step"]
    kind = environ.get("ROTATION_KIND", "")
    if kind not in KINDS:
        raise RotationError(f"ROTATION_KIND must be one of {sorted(KINDS)} (got {kind!r})")
    secretsmanager = clients["secretsmanager"]
    metadata = secretsmanager.describe_secret(SecretId=arn)
    if not metadata.get("RotationEnabled"):
        raise RotationError(f"secret {arn} does not have rotation enabled")
    stages = metadata.get("VersionIdsToStages", {})
    if token not in stages:
        raise RotationError(f"secret version {token} has no stage for rotation of {arn}")
    if CURRENT in stages[token]:
        log.info("%s: version %s is already AWSCURRENT", step, token)
        return
    if PENDING not in stages[token]:
        raise RotationError(f"secret version {token} is not AWSPENDING for rotation of {arn}")
    make, check = KINDS[kind]
    if step == "createSecret":
        create_secret(secretsmanager, arn, token, lambda current: make(current, clients, environ))
    elif step == "setSecret":
        log.info("setSecret: %s takes the new value when the monitoring task starts", kind)
    elif step == "testSecret":
        pending = secretsmanager.get_secret_value(SecretId=arn, VersionId=token, VersionStage=PENDING)
        check(pending["SecretString"], clients, environ)
    elif step == "finishSecret":
        finish_secret(secretsmanager, arn, token)
        roll_monitoring(clients["ecs"], environ)
    else:
        raise RotationError(f"unknown step {step!r}")


def create_secret(secretsmanager: Any, arn: str, token: str, make: Callable[[str], str]) -> None:
    current = secretsmanager.get_secret_value(SecretId=arn, VersionStage=CURRENT)["SecretString"]
    try:
        secretsmanager.get_secret_value(SecretId=arn, VersionId=token, VersionStage=PENDING)
        log.info("createSecret: version %s exists already", token)
        return
    except secretsmanager.exceptions.ResourceNotFoundException:
        pass
    secretsmanager.put_secret_value(
        SecretId=arn, ClientRequestToken=token, SecretString=make(current), VersionStages=[PENDING]
    )
    log.info("createSecret: stored version %s as AWSPENDING", token)


def finish_secret(secretsmanager: Any, arn: str, token: str) -> None:
    stages = secretsmanager.describe_secret(SecretId=arn)["VersionIdsToStages"]
    current = next((version for version, labels in stages.items() if CURRENT in labels), None)
    if current == token:
        return
    secretsmanager.update_secret_version_stage(
        SecretId=arn, VersionStage=CURRENT, MoveToVersionId=token, RemoveFromVersionId=current
    )
    # AWSPENDING goes too: left on the new version it is harmless to AWS but reads as a rotation still
    # in progress to anything that looks for it alone.
    secretsmanager.update_secret_version_stage(SecretId=arn, VersionStage=PENDING, RemoveFromVersionId=token)
    log.info("finishSecret: version %s is AWSCURRENT (was %s)", token, current)


def roll_monitoring(ecs: Any, environ: Mapping[str, str]) -> None:
    """Start a new monitoring task: its containers read AWSCURRENT when they start."""
    cluster, service = environ.get("MONITORING_CLUSTER"), environ.get("MONITORING_SERVICE")
    if not cluster or not service:
        return
    try:
        ecs.update_service(cluster=cluster, service=service, forceNewDeployment=True)
        log.info("finishSecret: rolled %s/%s onto the new value", cluster, service)
    except (
        ecs.exceptions.ClusterNotFoundException,
        ecs.exceptions.ServiceNotFoundException,
        ecs.exceptions.ServiceNotActiveException,
    ):
        # Not deployed (yet): nothing runs the old value; the first start reads the new one.
        log.warning("finishSecret: no active service %s/%s to roll", cluster, service)
