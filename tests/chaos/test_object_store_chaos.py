"""The object store under the lab's broker and cold tiers: a SIGKILL in the middle of writes loses no
acknowledged object and leaves nothing behind that breaks a later read or listing.

s3rver wrote each object's metadata file in place; a kill while it was being written left an empty file,
and from then on every listing of the bucket failed, which stopped tansu from serving any fetch.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from katas.infra.s3 import s3_client
from katas.infra.servers import S3rverServer

ROUNDS = 6
WRITERS = 8


def _write_until_stopped(endpoint: str, prefix: str, stop: threading.Event, acked: list[str]) -> None:
    client = s3_client(endpoint, retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
    seq = 0
    while not stop.is_set():
        key = f"{prefix}/{seq:06d}"
        try:
            client.put_object(Bucket="lake", Key=key, Body=key.encode(), ContentType="text/plain")
        except (BotoCoreError, ClientError):
            return  # the server is gone: what was acknowledged so far is what must survive
        acked.append(key)
        seq += 1


def test_a_kill_in_the_middle_of_writes_loses_no_acknowledged_object_and_breaks_no_listing(
    run_dir: Path, launch: Callable[[S3rverServer], S3rverServer]
) -> None:
    s3 = launch(S3rverServer("s3", run_dir, buckets=["lake"]))
    rng = random.Random(20261129)
    acked: list[str] = []
    for round_no in range(ROUNDS):
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            for writer in range(WRITERS):
                pool.submit(_write_until_stopped, s3.endpoint, f"r{round_no}/w{writer}", stop, acked)
            time.sleep(rng.uniform(0.3, 0.8))
            s3.kill()
            stop.set()
        s3.start()

    client = s3_client(s3.endpoint)
    listed = {
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake")
        for obj in page.get("Contents", [])
    }
    assert len(acked) > ROUNDS * WRITERS, "too few writes were acknowledged to prove anything"
    missing = set(acked) - listed
    assert not missing, f"{len(missing)} acknowledged objects are not listed, e.g. {sorted(missing)[:3]}"
    for key in listed:  # every listed object reads back whole, acknowledged or not
        assert client.get_object(Bucket="lake", Key=key)["Body"].read() == key.encode()
