"""The S3 client of the lab: boto3 pointed at s3rver natively and at MinIO under Compose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from katas.infra.settings import infra_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_ACCESS_KEY = "S3RVER"
S3_SECRET_KEY = "S3RVER"  # noqa: S105 - s3rver's fixed local credentials
S3_REGION = "us-east-1"


def s3_client(endpoint: str | None = None, **config: Any) -> S3Client:
    """A client for `endpoint` (with s3rver's credentials), or from the S3 settings (katas.infra.settings) when none is given.

    `config` goes to botocore's Config, e.g. max_pool_connections or retries.
    """
    if endpoint is None:
        settings = infra_settings()
        endpoint, key, secret, region = (
            settings.require("s3_endpoint"),
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_region,
        )
    else:
        key, secret, region = S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(**config) if config else None,
    )


def ensure_bucket(client: S3Client, bucket: str) -> None:
    """Create a bucket if it does not exist (s3rver keeps buckets on disk)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
