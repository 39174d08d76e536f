"""`cost --refresh-prices`: re-read the pinned figures from the AWS Price List API (boto3 `pricing`).

For each figure there is one query: a service code, the product's usage type without its region
prefix (`EU-NatGateway-Hours` -> `NatGateway-Hours`) and sometimes one more attribute. The API is
asked with `regionCode` and a `CONTAINS` filter on the usage type; among the products it returns,
exactly one must have that usage type once the region prefix is stripped. Its on-demand price
dimensions become the figure's tiers, converted to the figure's `per` and stamped with the SKU and
the price list's publication date. A figure no product matches keeps its pinned value, and the run
says which ones: the usage types marked `verified=False` were never checked against the live API.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from automation.cost_prices import PriceFigure, PriceKey, PriceTable, PriceTier
from factory_core.errors import OperationFailed

PRICING_API_REGION = (
    "us-east-1"  # the Price List API's endpoint (it also answers from ap-south-1, eu-central-1)
)
_REGION_PREFIX = re.compile(r"^[A-Z]{2,4}[0-9]?-")


@dataclass(frozen=True)
class PriceQuery:
    service_code: str
    usagetype: str  # without the region prefix
    attributes: tuple[tuple[str, str], ...] = ()  # more TERM_MATCH filters
    regional: bool = True  # False for global services (Route 53): no regionCode filter
    verified: bool = True  # False: the usage type name is inferred, not seen in a Price List response


QUERIES: dict[PriceKey, PriceQuery] = {
    PriceKey.IOT_CONNECTIVITY: PriceQuery("AWSIoT", "AWSIoT-ConnectionMinutes", verified=False),
    PriceKey.IOT_MESSAGING: PriceQuery("AWSIoT", "AWSIoT-MQTT", verified=False),
    PriceKey.IOT_RULES_TRIGGERED: PriceQuery("AWSIoT", "AWSIoT-RulesTriggered", verified=False),
    PriceKey.IOT_ACTIONS_EXECUTED: PriceQuery("AWSIoT", "AWSIoT-ActionsExecuted", verified=False),
    PriceKey.S3_STANDARD_STORAGE: PriceQuery("AmazonS3", "TimedStorage-ByteHrs"),
    PriceKey.S3_PUT_REQUESTS: PriceQuery("AmazonS3", "Requests-Tier1"),
    PriceKey.S3_GLACIER_STORAGE: PriceQuery("AmazonS3", "TimedStorage-GlacierByteHrs"),
    PriceKey.S3_GLACIER_TRANSITIONS: PriceQuery("AmazonS3", "Requests-GLACIER-Tier1", verified=False),
    PriceKey.FIREHOSE_INGESTION: PriceQuery(
        "AmazonKinesisFirehose", "BilledBytes", (("group", "Event-by-Event Processing"),)
    ),
    PriceKey.FARGATE_VCPU: PriceQuery("AmazonECS", "Fargate-vCPU-Hours:perCPU"),
    PriceKey.FARGATE_MEMORY: PriceQuery("AmazonECS", "Fargate-GB-Hours"),
    PriceKey.ALB_HOURS: PriceQuery(
        "AWSELB", "LoadBalancerUsage", (("productFamily", "Load Balancer-Application"),)
    ),
    PriceKey.ALB_LCU: PriceQuery("AWSELB", "LCUUsage", (("productFamily", "Load Balancer-Application"),)),
    PriceKey.NAT_HOURS: PriceQuery("AmazonEC2", "NatGateway-Hours"),
    PriceKey.NAT_DATA: PriceQuery("AmazonEC2", "NatGateway-Bytes"),
    PriceKey.PUBLIC_IPV4: PriceQuery("AmazonVPC", "PublicIPv4:InUseAddress"),
    PriceKey.LOGS_INGESTION: PriceQuery(
        "AmazonCloudWatch", "DataProcessing-Bytes", (("productFamily", "Data Payload"),)
    ),
    PriceKey.LOGS_STORAGE: PriceQuery(
        "AmazonCloudWatch", "TimedStorage-ByteHrs", (("productFamily", "Storage Snapshot"),)
    ),
    PriceKey.CLOUDWATCH_METRICS: PriceQuery("AmazonCloudWatch", "CW:MetricMonitorUsage"),
    PriceKey.SECRETS: PriceQuery("AWSSecretsManager", "AWSSecretsManager-Secrets"),
    PriceKey.CLOUD_MAP_INSTANCES: PriceQuery("AWSCloudMap", "RegisteredResource", verified=False),
    PriceKey.ROUTE53_PRIVATE_ZONE: PriceQuery("AmazonRoute53", "HostedZone", regional=False),
    PriceKey.EFS_STANDARD_STORAGE: PriceQuery("AmazonEFS", "TimedStorage-ByteHrs"),
    PriceKey.WAF_WEB_ACL: PriceQuery("awswaf", "WebACLV2", verified=False),
    PriceKey.WAF_RULES: PriceQuery("awswaf", "RuleV2", verified=False),
    PriceKey.WAF_REQUESTS: PriceQuery("awswaf", "RequestV2-Tier1", verified=False),
    PriceKey.SNS_REQUESTS: PriceQuery("AmazonSNS", "Requests-Tier1"),
    PriceKey.KMS_KEYS: PriceQuery("awskms", "KMS-Keys", verified=False),
}


class PricingClient(Protocol):
    """The one call of boto3's `pricing` client this module makes (via its paginator)."""

    def get_paginator(self, operation_name: str) -> Any: ...


class PriceNotFound(LookupError):
    """No product (or more than one) answers a figure's query."""


@dataclass
class RefreshResult:
    table: PriceTable
    refreshed: list[PriceKey] = field(default_factory=list)
    kept: dict[PriceKey, str] = field(default_factory=dict)  # figure -> why the pinned value stayed

    def summary(self) -> str:
        text = f"{len(self.refreshed)} of {len(PriceKey)} figures refreshed from the AWS Price List API"
        if self.kept:
            text += "; kept pinned: " + "; ".join(f"{key.value} ({why})" for key, why in self.kept.items())
        return text


def pricing_client() -> PricingClient:
    import boto3

    return boto3.client("pricing", region_name=PRICING_API_REGION)


def refresh_price_table(
    region: str, client: PricingClient, pinned: PriceTable | None, today: dt.date
) -> RefreshResult:
    """A new table for `region`: every figure the API answers, the pinned value for the others."""
    figures: dict[PriceKey, PriceFigure] = {}
    refreshed: list[PriceKey] = []
    kept: dict[PriceKey, str] = {}
    for key, query in QUERIES.items():
        base = pinned.figures.get(key) if pinned else None
        try:
            figures[key] = fetch_figure(client, region, key, query, base, today)
            refreshed.append(key)
        except PriceNotFound as exc:
            if base is None:
                raise OperationFailed(
                    f"no price for {key.value} in {region} ({exc}) and no pinned table to fall back on"
                ) from None
            figures[key] = base
            kept[key] = str(exc)
    how = (
        f"Fetched from the AWS Price List API (GetProducts, on-demand terms) on {today.isoformat()}; "
        "figures whose source is a pricing page kept their pinned value. Never checked against a bill."
    )
    table = PriceTable(region=region, pinned_on=today, how=how, figures=figures)
    return RefreshResult(table, refreshed, kept)


def fetch_figure(
    client: PricingClient,
    region: str,
    key: PriceKey,
    query: PriceQuery,
    base: PriceFigure | None,
    today: dt.date,
) -> PriceFigure:
    """One figure from the Price List: its product's on-demand tiers, in the figure's `per` units."""
    products = [json.loads(item) for item in _price_list(client, region, query)]
    matching = [product for product in products if _usagetype(product) == query.usagetype]
    if len(matching) != 1:
        seen = sorted({_usagetype(product) or "?" for product in products})[:5]
        found = "none" if not matching else f"{len(matching)} products"
        raise PriceNotFound(f"{found} with usage type {query.usagetype}; saw {', '.join(seen) or 'nothing'}")
    product = matching[0]
    per = base.per if base else 1
    tiers = _tiers(product, per)
    sku = product["product"]["sku"]
    published = str(product.get("publicationDate", "")).split("T")[0]
    return PriceFigure(
        description=base.description if base else key.value,
        unit=base.unit if base else _dimensions(product)[0].get("unit", ""),
        per=per,
        tiers=tiers,
        date=today,
        source=f"AWS Price List API, {query.service_code} SKU {sku} (price list of {published})",
    )


def _price_list(client: PricingClient, region: str, query: PriceQuery) -> list[str]:
    filters = [{"Type": "CONTAINS", "Field": "usagetype", "Value": query.usagetype}]
    if query.regional:
        filters.insert(0, {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region})
    filters += [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in query.attributes]
    items: list[str] = []
    pages = client.get_paginator("get_products").paginate(
        ServiceCode=query.service_code, Filters=filters, FormatVersion="aws_v1"
    )
    for page in pages:
        items += page.get("PriceList", [])
    return items


def _usagetype(product: dict[str, Any]) -> str | None:
    usagetype = product.get("product", {}).get("attributes", {}).get("usagetype")
    return None if usagetype is None else _REGION_PREFIX.sub("", usagetype, count=1)


def _dimensions(product: dict[str, Any]) -> list[dict[str, Any]]:
    terms = product.get("terms", {}).get("OnDemand", {})
    dimensions = [dim for term in terms.values() for dim in term.get("priceDimensions", {}).values()]
    if not dimensions:
        raise PriceNotFound(f"SKU {product['product'].get('sku')} has no on-demand price")
    return sorted(dimensions, key=lambda dim: float(dim.get("beginRange", "0")))


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _tiers(product: dict[str, Any], per: int) -> tuple[PriceTier, ...]:
    tiers = []
    for dimension in _dimensions(product):
        end = dimension.get("endRange", "Inf")
        usd = float(dimension["pricePerUnit"]["USD"]) * per
        tiers.append(PriceTier(up_to=None if end == "Inf" else _number(end), usd=round(usd, 10)))
    # A free first slice is the free tier (or a monthly allowance); the model leaves free tiers out.
    while len(tiers) > 1 and tiers[0].usd == 0:
        tiers.pop(0)
    return tuple(tiers)
