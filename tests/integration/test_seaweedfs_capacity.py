"""SeaweedFS's room for buckets does not depend on the free disk, and what it needs is said.

Each bucket is a collection of volumes of its own. Left to its defaults weed grew 7
volumes per new bucket and allowed as many volumes as fit, at 64 MB each, in the free
space of TMPDIR: on a 2.4 GB tmpfs /tmp the fifth bucket took the last one, and from then
on every PutObject into a new bucket answered InternalError, well into a full run.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest

from devstack import DevstackError, SeaweedFSServer


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


@pytest.mark.seaweedfs
def test_a_bucket_takes_one_volume_of_a_fixed_budget_and_gives_it_back(
    seaweedfs_server: SeaweedFSServer,
) -> None:
    seaweedfs_server.start()
    before = seaweedfs_server.volumes()
    # The budget is a count, whatever the disk under TMPDIR (auto: free space / 64 MB).
    assert before.total == SeaweedFSServer.max_volumes
    client = seaweedfs_server.client()
    name = _name("one-volume")
    seaweedfs_server.create_bucket(name)
    client.put_object(Bucket=name, Key="k", Body=b"x" * 1000)

    after = seaweedfs_server.volumes()
    assert (after.by_collection[name], after.free) == (1, before.free - 1)

    client.delete_object(Bucket=name, Key="k")
    client.delete_bucket(Bucket=name)
    gone = seaweedfs_server.volumes()
    assert (name in gone.by_collection, gone.free) == (False, before.free)


@pytest.mark.seaweedfs
def test_every_volume_of_a_small_budget_serves_a_bucket_then_the_next_one_is_refused() -> None:
    budget = 6
    with SeaweedFSServer(max_volumes=budget) as server:
        client = server.client()
        names = [_name(f"bucket-{i}") for i in range(budget)]
        for name in names:
            server.create_bucket(name)
            client.put_object(Bucket=name, Key="k", Body=name.encode())
        for name in names:
            assert client.get_object(Bucket=name, Key="k")["Body"].read() == name.encode()
        assert server.volumes().free == 0

        # Not an InternalError on the first PutObject: the count, and what to do about it.
        with pytest.raises(DevstackError, match=rf"no volume left .* all {budget} \(max_volumes\)"):
            server.create_bucket(_name("one-too-many"))


def test_too_little_free_space_in_tmpdir_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = SeaweedFSServer(disk_needed=1 << 60)
    try:
        with pytest.raises(DevstackError) as raised:
            server.start()
        assert not server.is_running()
    finally:
        server.cleanup()
    message = str(raised.value)
    assert message.startswith(f"TMPDIR ({tmp_path}) has ")
    assert f"SeaweedFS needs {((1 << 60) + SeaweedFSServer.min_free_space) >> 20} MiB" in message
