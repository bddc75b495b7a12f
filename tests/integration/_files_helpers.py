"""Helpers for the file-route tests (test_files.py, test_files_safety.py)."""
import hashlib
import json
import os
import shutil
import tempfile
import uuid

import pytest

ALIAS = "/home/devbox/project"


def multipart(parts, boundary=None):
    """Builds a multipart/form-data body by hand (so tests control every byte).

    parts: list of (name, filename or None, data bytes, extra header lines list or None).
    A name of None leaves the name parameter out. Returns (content_type, body)."""
    b = boundary or ("----dbxtest" + uuid.uuid4().hex)
    out = []
    for name, filename, data, extra in parts:
        cd = "Content-Disposition: form-data"
        if name is not None:
            cd += '; name="%s"' % name
        if filename is not None:
            cd += '; filename="%s"' % filename
        head = "--" + b + "\r\n" + cd + "\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        for line in extra or ():
            head += line + "\r\n"
        out.append(head.encode() + b"\r\n" + data + b"\r\n")
    out.append(("--" + b + "--\r\n").encode())
    return "multipart/form-data; boundary=" + b, b"".join(out)


def undici_name(name):
    """How Node's FormData escapes a filename (only ", CR and LF)."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def envelope(st, hd, data):
    assert st == 200, (st, data[:500])
    assert hd.get("content-type", "").startswith("application/json"), (hd, data[:500])
    return json.loads(data)


def api_raw(agent, method, path, body=None, headers=None, query=None):
    return envelope(*agent.request(method, path, body=body, headers=headers, query=query))


def write_json(agent, path, content, **extra):
    obj = {"path": path, "content": content}
    obj.update(extra)
    return agent.api("POST", "/api/v1/files/write", obj)


def write_raw(agent, path, data, ctype="application/octet-stream"):
    q = {"path": path} if path is not None else None
    hdrs = {"Content-Type": ctype} if ctype else {}
    return api_raw(agent, "POST", "/api/v1/files/write", body=data, headers=hdrs, query=q)


def write_multipart(agent, parts):
    ct, body = multipart(parts)
    return api_raw(agent, "POST", "/api/v1/files/write", body=body,
                   headers={"Content-Type": ct})


def batch_upload(agent, files, extra_parts=()):
    """files: list of (filename, bytes)."""
    parts = list(extra_parts) + [("files", undici_name(n), d, None) for n, d in files]
    ct, body = multipart(parts)
    return api_raw(agent, "POST", "/api/v1/files/batch-upload", body=body,
                   headers={"Content-Type": ct})


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def snapshot(root):
    """Everything observable about a tree: type, mode, size, mtime_ns, content hash, target."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rec = [st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid]
            if os.path.islink(p):
                rec.append(os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    rec.append(hashlib.sha256(f.read()).hexdigest())
            snap[os.path.relpath(p, root)] = rec
    st = os.lstat(root)
    snap["."] = [st.st_mode, st.st_mtime_ns]
    return snap


SECRET = b"TOP-SECRET-sentinel-content\n"


@pytest.fixture
def sentinel():
    """A directory outside the workspace with a file and a subdirectory in it."""
    d = os.path.realpath(tempfile.mkdtemp(prefix="dbx-sentinel-"))
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "secret"), "wb") as f:
        f.write(SECRET)
    with open(os.path.join(d, "sub", "deep.txt"), "wb") as f:
        f.write(SECRET)
    os.chmod(os.path.join(d, "secret"), 0o640)
    yield d
    shutil.rmtree(d, ignore_errors=True)
