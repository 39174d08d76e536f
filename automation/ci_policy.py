"""The inline IAM policy a CI role needs for a stack's state and secrets, generated (never written by hand).

`bootstrap` writes it for the real bucket and key (`automation/ci-policies/<stack>.json`), and
docs/cloud.md shows it for example values; a test lints it with parliament and checks the doc.
KMS permissions name the key's ARN: IAM matches `kms:` actions against the key, so a policy on an
alias ARN grants nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from automation.state_backend import STATE_PREFIX

CI_POLICIES_DIR = Path("automation") / "ci-policies"
# What `pulumi preview` (and `drift`) do on a DIY backend: read the checkpoint and history, write
# and delete their lock and history objects; decrypt the stack's data key with its KMS key.
STATE_OBJECT_ACTIONS = ("s3:DeleteObject", "s3:GetObject", "s3:PutObject")
SECRETS_KEY_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


def ci_role_policy(bucket: str, kms_key_arn: str, partition: str = "aws") -> dict[str, Any]:
    """State bucket (SSE-S3, so no KMS grant for it) plus the stack's own secrets key, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListStateBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:{partition}:s3:::{bucket}"],
            },
            {
                "Sid": "ReadWriteState",
                "Effect": "Allow",
                "Action": list(STATE_OBJECT_ACTIONS),
                "Resource": [f"arn:{partition}:s3:::{bucket}/{STATE_PREFIX}*"],
            },
            {
                "Sid": "StackSecrets",
                "Effect": "Allow",
                "Action": list(SECRETS_KEY_ACTIONS),
                "Resource": [kms_key_arn],
            },
        ],
    }


def render(policy: dict[str, Any]) -> str:
    return json.dumps(policy, indent=2) + "\n"


def write_ci_policy(project_dir: Path, stack: str, bucket: str, kms_key_arn: str) -> Path:
    """Write the stack's CI policy next to the backends file (no secrets: commit it). Returns its path."""
    path = project_dir / CI_POLICIES_DIR / f"{stack}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(ci_role_policy(bucket, kms_key_arn))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
