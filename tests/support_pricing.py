"""Recorded Price List API responses, replayed through botocore's Stubber (moto does not model pricing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
from botocore.stub import Stubber

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pricing" / "get_products_eu-west-1.json"


def recorded_calls() -> list[dict[str, Any]]:
    """One entry per figure, in the order automation/price_refresh.py asks: request and response pages."""
    calls: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))["calls"]
    return calls


def stubbed_pricing_client(calls: list[dict[str, Any]]) -> tuple[Any, Stubber]:
    """A real boto3 `pricing` client that answers exactly these calls, and checks each request."""
    client = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    for call in calls:
        token = None
        for page in call["pages"]:
            expected = dict(call["request"], **({"NextToken": token} if token else {}))
            stubber.add_response("get_products", page, expected)
            token = page.get("NextToken")
    stubber.activate()
    return client, stubber
