"""/fs/v1 read/write on a 100 MiB file: ranged reads, offset writes, checked with XXH3-64
(the digest libdevbox uses for transfers; python3-xxhash from Debian)."""
import os
import random

import pytest
import xxhash

from _fsapi_helpers import Fs

SIZE = 100 * 1024 * 1024


@pytest.fixture
def fs(agent):
    f = Fs(agent)
    yield f
    f.close()


def digest(b):
    return xxhash.xxh3_64_hexdigest(bytes(b))


def test_big_write_and_ranged_reads(fs, workspace):
    rnd = random.Random(1234)
    data = bytearray(rnd.randbytes(SIZE))
    path = os.path.join(workspace, "big")
    # the whole file in one streamed body
    a = fs.write("big", bytes(data))
    assert a["size"] == SIZE
    with open(path, "rb") as f:
        assert digest(f.read()) == digest(data)
    # a full read back
    assert digest(fs.read("big")) == digest(data)
    assert fs.last_headers["content-length"] == str(SIZE)
    # ranged reads at awkward places (Range header and offset/length)
    for start, length in [(0, 1), (SIZE - 1, 1), (12345, 3 * 1024 * 1024 + 7),
                          (SIZE // 2, SIZE // 2), (256 * 1024 - 1, 2)]:
        got = fs.read("big", headers={"Range": "bytes=%d-%d" % (start, start + length - 1)})
        assert digest(got) == digest(data[start:start + length]), (start, length)
        got = fs.read("big", offset=start, length=length)
        assert digest(got) == digest(data[start:start + length]), (start, length)
    # offset writes in the middle and past the end
    for off, n in [(7, 1000), (SIZE // 3, 5 * 1024 * 1024 + 3), (SIZE - 10, 10)]:
        patch = rnd.randbytes(n)
        fs.write("big", patch, offset=off)
        data[off:off + n] = patch
    with open(path, "rb") as f:
        assert digest(f.read()) == digest(data)
    assert digest(fs.read("big")) == digest(data)


def test_big_atomic_write(fs, workspace):
    data = os.urandom(20 * 1024 * 1024)
    fs.write("a", b"old")
    a = fs.write("a", data, atomic=1, fsync=1)
    assert a["size"] == len(data)
    with open(os.path.join(workspace, "a"), "rb") as f:
        assert digest(f.read()) == digest(data)
