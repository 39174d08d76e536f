"""Whether a DIY backend (S3 or a folder) holds a lock for a stack, and who took it.

Pulumi's DIY backend writes one object per lock under `.pulumi/locks/organization/<project>/<stack>/`
(`.pulumi/locks/<stack>/` for backends from before projects), holding the pid, user, host and
time of the update that took it, and deletes it when that update ends. After an interrupted update
has exited, a lock still there means it was not released: only then is `pulumi cancel` the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from automation.stack_port import StackLock

_LOCK_DIRECTORIES = (".pulumi/locks/organization/{project}/{stack}/", ".pulumi/locks/{stack}/")


def _holder(document: Any) -> str:
    if not isinstance(document, dict):
        return "holder unknown"
    who = f"{document.get('username', '?')}@{document.get('hostname', '?')}"
    return f"taken by {who} (pid {document.get('pid', '?')}) at {document.get('timestamp', '?')}"


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def read_locks(backend_url: str | None, project: str, stack: str) -> list[StackLock] | None:
    """The stack's locks in an `s3://` or `file://` backend; None for other backends or on any error."""
    if not backend_url:
        return None
    url = urlparse(backend_url)
    prefixes = [pattern.format(project=project, stack=stack) for pattern in _LOCK_DIRECTORIES]
    try:
        if url.scheme == "s3":
            return _s3_locks(url.netloc, url.path.strip("/"), parse_qs(url.query), prefixes)
        if url.scheme == "file":
            return _folder_locks(Path(url.netloc + url.path).expanduser(), prefixes)
    except Exception:  # any failure to read means "cannot tell", never a crash
        return None
    return None


def _s3_locks(bucket: str, root: str, query: dict[str, list[str]], prefixes: list[str]) -> list[StackLock]:
    import boto3

    region = (query.get("region") or [None])[0]
    s3 = boto3.session.Session(region_name=region).client("s3")
    base = f"{root}/" if root else ""
    locks = []
    for prefix in prefixes:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=base + prefix)
        for item in listing.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            locks.append(StackLock(f"s3://{bucket}/{item['Key']}", _holder(_parse(body))))
    return locks


def _folder_locks(root: Path, prefixes: list[str]) -> list[StackLock]:
    locks = []
    for prefix in prefixes:
        folder = root / prefix
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            locks.append(StackLock(str(path), _holder(_parse(path.read_bytes()))))
    return locks
