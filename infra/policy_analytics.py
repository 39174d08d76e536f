"""Policy rule for the archive's analytics (issue 13), registered into `infra.policy` on import.

- `athena-workgroup`: queries cannot opt out of the workgroup's settings (encrypted results in the
  stack's own bucket, a bytes-scanned cutoff), and the archive's partitions are projected, never
  crawled.
"""

from __future__ import annotations

from collections.abc import Iterator

from infra.policy import (
    ATHENA_WORKGROUP,
    BUCKET,
    GLUE_CRAWLER,
    PolicyContext,
    Violation,
    _Index,
    _label,
    rule,
)


@rule("athena-workgroup")
def _athena(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    """Queries cannot opt out of the workgroup's settings: encrypted results, in the stack's bucket,
    and a cap on what one query may scan (Athena bills by bytes scanned)."""
    buckets = {str(bucket.inputs.get("bucket") or bucket.id) for bucket in index.of(BUCKET)}
    for record in index.of(ATHENA_WORKGROUP):
        label = _label(record)
        configuration = record.inputs.get("configuration") or {}
        if configuration.get("enforceWorkgroupConfiguration") is not True:
            yield Violation("athena-workgroup", label, "workgroup configuration is not enforced")
        results = configuration.get("resultConfiguration") or {}
        if not (results.get("encryptionConfiguration") or {}).get("encryptionOption"):
            yield Violation("athena-workgroup", label, "query results are not encrypted")
        location = str(results.get("outputLocation") or "")
        if location.removeprefix("s3://").split("/", 1)[0] not in buckets:
            where = location or "nowhere"
            yield Violation("athena-workgroup", label, f"results go to {where}, not a bucket of this stack")
        if not configuration.get("bytesScannedCutoffPerQuery"):
            yield Violation("athena-workgroup", label, "no bytes-scanned cutoff per query")
    for record in index.of(GLUE_CRAWLER):
        why = "a crawler: the archive's partitions are projected, not crawled"
        yield Violation("athena-workgroup", _label(record), why)
