"""The pinned AWS price tables the cost model reads: one JSON file per region under automation/prices/.

Every figure carries its unit, the quantity its price is for (`per`), its tiers, the date it was pinned
and where it came from (a pricing page, or a Price List API SKU after `--refresh-prices`). The model
never holds a price itself: it asks the table for the cost of a quantity (`cost(key, quantity)`),
which applies the tiers.
"""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory_core.errors import UsageError

PRICE_DIR = Path(__file__).resolve().parent / "prices"


class PriceKey(StrEnum):
    """Every figure the cost model uses; a table must hold all of them."""

    IOT_CONNECTIVITY = "iot_connectivity"
    IOT_MESSAGING = "iot_messaging"
    IOT_RULES_TRIGGERED = "iot_rules_triggered"
    IOT_ACTIONS_EXECUTED = "iot_actions_executed"
    S3_STANDARD_STORAGE = "s3_standard_storage"
    S3_PUT_REQUESTS = "s3_put_requests"
    S3_GLACIER_STORAGE = "s3_glacier_storage"
    S3_GLACIER_TRANSITIONS = "s3_glacier_transitions"
    FIREHOSE_INGESTION = "firehose_ingestion"
    FARGATE_VCPU = "fargate_vcpu"
    FARGATE_MEMORY = "fargate_memory"
    ALB_HOURS = "alb_hours"
    ALB_LCU = "alb_lcu"
    NAT_HOURS = "nat_hours"
    NAT_DATA = "nat_data"
    PUBLIC_IPV4 = "public_ipv4"
    LOGS_INGESTION = "logs_ingestion"
    LOGS_STORAGE = "logs_storage"
    CLOUDWATCH_METRICS = "cloudwatch_metrics"
    SECRETS = "secrets"
    CLOUD_MAP_INSTANCES = "cloud_map_instances"
    ROUTE53_PRIVATE_ZONE = "route53_private_zone"
    EFS_STANDARD_STORAGE = "efs_standard_storage"
    WAF_WEB_ACL = "waf_web_acl"
    WAF_RULES = "waf_rules"
    WAF_REQUESTS = "waf_requests"
    SNS_REQUESTS = "sns_requests"
    KMS_KEYS = "kms_keys"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceTier(_Model):
    up_to: Annotated[int | float | None, Field(gt=0)] = None  # in the figure's unit; None: no upper bound
    usd: Annotated[float, Field(ge=0)]  # for `per` units


class PriceFigure(_Model):
    description: str
    unit: str  # what is counted: "messages", "GB-month", "hours", ...
    per: Annotated[int, Field(gt=0)]  # the price is for this many units (1,000,000 messages)
    tiers: Annotated[tuple[PriceTier, ...], Field(min_length=1)]
    date: dt.date  # when this figure was pinned or fetched
    source: Annotated[str, Field(min_length=1)]  # pricing page URL, or "AWS Price List API SKU ..."

    @model_validator(mode="after")
    def _tiers_ascend(self) -> PriceFigure:
        bounds = [tier.up_to for tier in self.tiers]
        if bounds[-1] is not None:
            raise ValueError("the last tier must have no upper bound (up_to: null)")
        finite = [bound for bound in bounds[:-1] if bound is not None]
        if len(finite) != len(bounds) - 1 or finite != sorted(set(finite)):
            raise ValueError("tier bounds must be given and strictly ascending")
        return self

    def cost(self, quantity: float) -> float:
        """USD for `quantity` units, each slice of it at its tier's price."""
        total, floor = 0.0, 0.0
        for tier in self.tiers:
            ceiling = float("inf") if tier.up_to is None else tier.up_to
            in_tier = max(0.0, min(quantity, ceiling) - floor)
            total += in_tier * tier.usd / self.per
            floor = ceiling
            if quantity <= floor:
                break
        return total

    def first_tier_usd(self) -> float:
        return self.tiers[0].usd


class PriceTable(_Model):
    """One region's figures, in USD."""

    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    currency: str = "USD"
    pinned_on: dt.date
    how: str  # how the figures were obtained, in one sentence
    figures: dict[PriceKey, PriceFigure]

    @model_validator(mode="after")
    def _complete(self) -> PriceTable:
        missing = sorted(key.value for key in PriceKey if key not in self.figures)
        if missing:
            raise ValueError(f"figures missing: {', '.join(missing)}")
        if self.currency != "USD":
            raise ValueError(f"currency must be USD (got {self.currency})")
        return self

    def cost(self, key: PriceKey, quantity: float) -> float:
        return self.figures[key].cost(quantity)

    def figure(self, key: PriceKey) -> PriceFigure:
        return self.figures[key]


def table_path(region: str, price_dir: Path | None = None) -> Path:
    # Resolved at call time, so tests can point PRICE_DIR elsewhere and never touch the pinned files.
    return (price_dir or PRICE_DIR) / f"{region}.json"


def pinned_regions(price_dir: Path | None = None) -> list[str]:
    return sorted(path.stem for path in (price_dir or PRICE_DIR).glob("*.json"))


def load_price_table(region: str, price_dir: Path | None = None) -> PriceTable:
    """The pinned table for `region`; a missing or broken file is a one-line UsageError."""
    path = table_path(region, price_dir)
    if not path.is_file():
        pinned = ", ".join(pinned_regions(price_dir)) or "none"
        raise UsageError(
            f"no pinned prices for region {region} (pinned: {pinned}); fetch them with "
            "--refresh-prices (needs AWS credentials) or add automation/prices/<region>.json"
        )
    try:
        table = PriceTable.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path.name}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file"
        ) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UsageError(f"{path.name}: {where}: {error['msg']}; fix the file") from None
    if table.region != region:
        raise UsageError(f"{path.name} holds prices for {table.region}, not {region}; fix its 'region'")
    return table


def save_price_table(table: PriceTable, price_dir: Path | None = None) -> Path:
    """Write the table the way the pinned files are written (stable key order, one figure per block)."""
    path = table_path(table.region, price_dir)
    document = table.model_dump(mode="json")
    document["figures"] = {key.value: document["figures"][key.value] for key in PriceKey}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
