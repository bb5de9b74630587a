#!/usr/bin/env python3
"""Writes hk's seed corpus for the fuzz targets into fuzz/corpus/TARGET/ (small, checked
in; scripts/fuzz copies it to a working corpus before a run). Layouts are the ones
fuzz/src/lib.rs and each target's header comment describe."""
import gzip, io, json, os, struct, tarfile, hashlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- device inputs -------------------------------------------------------------------
NEXT, WRITE = 1, 2


class Mem:
    def __init__(self):
        self.b = bytearray(0x4000)

    def put(self, addr, data):
        end = addr + len(data)
        if end > len(self.b):
            self.b.extend(bytes(end - len(self.b)))
        self.b[addr:end] = data


def ring(q):
    desc = 0x100 + 0x300 * q
    return desc, desc + 0x100, desc + 0x200


def chains(mem, q, chains_):
    """chains_: list of chains, each a list of (addr, len, flags); descriptors numbered in order."""
    desc, avail, _ = ring(q)
    i = 0
    heads = []
    for chain in chains_:
        heads.append(i)
        for k, (addr, ln, flags) in enumerate(chain):
            last = k == len(chain) - 1
            f = flags | (0 if last else NEXT)
            mem.put(desc + 16 * i, struct.pack("<QIHH", addr, ln, f, 0 if last else i + 1))
            i += 1
    mem.put(avail, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))


def device_input(mem, rounds=1, size_exp=4, flags=0, flags2=0, host=b""):
    control = bytes([rounds - 1, size_exp, flags, flags2]) + struct.pack("<H", len(host)) + bytes(10)
    return control + host + bytes(mem.b)


def blk():
    m = Mem()
    m.put(0x1000, struct.pack("<IIQ", 0, 0, 2))  # read sector 2
    m.put(0x1010, struct.pack("<IIQ", 1, 0, 4))  # write sector 4
    m.put(0x1020, struct.pack("<IIQ", 4, 0, 0))  # flush
    m.put(0x1030, struct.pack("<IIQ", 8, 0, 0))  # get id
    m.put(0x2400, b"w" * 512)
    chains(m, 0, [
        [(0x1000, 16, 0), (0x2000, 512, WRITE), (0x3000, 1, WRITE)],
        [(0x1010, 16, 0), (0x2400, 512, 0), (0x3001, 1, WRITE)],
        [(0x1020, 16, 0), (0x3002, 1, WRITE)],
        [(0x1030, 16, 0), (0x2800, 20, WRITE), (0x3003, 1, WRITE)],
    ])
    put("virtio_blk", "requests", device_input(m))
    m2 = Mem()
    m2.put(0x1000, struct.pack("<IIQ", 0, 0, 1) + b"x" * 0)
    # header split over two descriptors, status inside a longer writable one
    chains(m2, 0, [[(0x1000, 8, 0), (0x1008, 8, 0), (0x2000, 513, WRITE)]])
    put("virtio_blk", "split", device_input(m2, flags=1))


def vsock_hdr(src_port, dst_port, op, length=0, typ=1, buf_alloc=262144, fwd_cnt=0, flags=0):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, typ, op, flags, buf_alloc, fwd_cnt)


def vsock():
    m = Mem()
    # tx (queue 1): request to host port 1024, then data, then shutdown
    m.put(0x1000, vsock_hdr(5000, 1024, 1))
    m.put(0x1100, vsock_hdr(5000, 1024, 5, length=5) + b"hello")
    m.put(0x1200, vsock_hdr(5000, 1024, 6))  # credit update
    m.put(0x1300, vsock_hdr(5000, 1024, 4, flags=3))  # shutdown
    chains(m, 1, [[(0x1000, 44, 0)], [(0x1100, 49, 0)], [(0x1200, 44, 0)], [(0x1300, 44, 0)]])
    # rx (queue 0): four buffers; event (queue 2): one
    chains(m, 0, [[(0x2000 + 0x400 * i, 0x400, WRITE)] for i in range(4)])
    chains(m, 2, [[(0x3000, 8, WRITE)]])
    put("virtio_vsock", "connect", device_input(m, rounds=3, host=b"from the host"))
    put("virtio_vsock", "connect-close-reset", device_input(m, rounds=3, flags=3, host=b"x" * 300))
    # A hybrid-socket client asks for guest port 52: the device's request lands in the rx
    # buffers (the fuzzer finds the guest's answers).
    h = Mem()
    chains(h, 0, [[(0x2000 + 0x400 * i, 0x400, WRITE)] for i in range(4)])
    chains(h, 2, [[(0x3000, 8, WRITE)]])
    put("virtio_vsock", "hybrid-connect", device_input(h, rounds=3, flags=4, host=b"CONNECT 52\nping"))


def net():
    m = Mem()
    frame = bytes([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]) + b"p" * 50
    m.put(0x1000, bytes(12) + frame)
    chains(m, 1, [[(0x1000, 12, 0), (0x100c, len(frame), 0)]])
    chains(m, 0, [[(0x2000 + 0x800 * i, 0x800, WRITE)] for i in range(4)])
    host = struct.pack(">I", len(frame)) + frame
    put("virtio_net", "tx-rx", device_input(m, rounds=2, flags=1, host=host * 3))
    put("virtio_net", "tx-rx-nomrg-close", device_input(m, rounds=3, flags=2, host=host))


def fuse(opcode, unique, nodeid, body):
    return struct.pack("<IIQQIIII", 40 + len(body), opcode, unique, nodeid, 0, 0, 0, 0) + body


def fs():
    m = Mem()
    init = fuse(26, 1, 0, struct.pack("<IIII", 7, 31, 0x20000, 0) + bytes(48))
    lookup = fuse(1, 2, 1, b"a\0")
    opendir = fuse(27, 3, 1, struct.pack("<II", 0, 0))
    readdir = fuse(28, 4, 1, struct.pack("<QQIIQII", 0, 0, 4096, 0, 0, 0, 0))
    getattr_ = fuse(3, 5, 1, struct.pack("<IIQ", 0, 0, 0))
    reqs = [init, lookup, opendir, readdir, getattr_]
    at = 0x1000
    cs = []
    for i, r in enumerate(reqs):
        m.put(at, r)
        cs.append([(at, len(r), 0), (0x8000 + 0x1000 * i, 0x1000, WRITE)])
        at += 0x100
    chains(m, 1, cs)
    put("virtio_fs", "init-lookup-readdir", device_input(m, rounds=1))
    m2 = Mem()
    create = fuse(35, 2, 1, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + b"new\0")
    write = fuse(16, 3, 2, struct.pack("<QQIIQII", 0, 0, 5, 0, 0, 0, 0) + b"hello")
    mkdir = fuse(9, 4, 1, struct.pack("<II", 0o755, 0o22) + b"dir\0")
    at = 0x1000
    cs = []
    for i, r in enumerate([init, create, write, mkdir]):
        m2.put(at, r)
        cs.append([(at, len(r), 0), (0x8000 + 0x1000 * i, 0x1000, WRITE)])
        at += 0x100
    chains(m2, 1, cs)
    put("virtio_fs", "init-create-write", device_input(m2, rounds=1))


def mmio():
    m = Mem()
    m.b = bytearray(0x800)
    chains(m, 0, [[(0x600, 64, WRITE)]])
    ops = []
    W = lambda off, v: ops.append(struct.pack("<BBHI", 1, 2, off, v))
    R = lambda off: ops.append(struct.pack("<BBHI", 0, 2, off, 0))
    R(0x000); R(0x004); R(0x008)
    W(0x070, 1); W(0x070, 3)
    W(0x014, 1); R(0x010); W(0x024, 1); W(0x020, 1); W(0x024, 0); W(0x020, 0)
    W(0x070, 0xb); R(0x070)
    W(0x030, 0); R(0x034); W(0x038, 16)
    desc, avail, used = ring(0)
    W(0x080, desc); W(0x084, 0); W(0x090, avail); W(0x094, 0); W(0x0a0, used); W(0x0a4, 0)
    W(0x044, 1); W(0x070, 0xf)
    ops.append(struct.pack("<BBHI", 2, 2, 0, 0))  # activate pending
    ops.append(struct.pack("<BBHI", 3, 2, 0, 0))  # notify
    R(0x060); W(0x064, 1); R(0x100); W(0x070, 0)
    put("virtio_mmio", "setup-notify-reset", bytes(m.b) + b"".join(ops))


# --- image inputs --------------------------------------------------------------------
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = len(arg), 0o644
                t.addfile(ti, io.BytesIO(arg))
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
                t.addfile(ti)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
                t.addfile(ti)
    return buf.getvalue()


LAYER1 = tar([("etc", "dir", None), ("etc/passwd", "file", b"root:x:0:0::/root:/bin/sh\n"),
              ("bin", "dir", None), ("bin/sh", "file", b"\x7fELF" + bytes(60)),
              ("bin/ash", "hard", "bin/sh"), ("usr/lib/deep/x", "file", b"x"),
              ("lib", "sym", "usr/lib")])
LAYER2 = tar([("etc/.wh.passwd", "file", b""), ("usr/lib/.wh..wh..opq", "file", b""),
              ("etc/hostname", "file", b"fuzz\n")])


def ext4():
    put("ext4_tar", "one-layer", bytes([0]) + struct.pack("<II", 0, 0) + LAYER1)
    put("ext4_tar", "two-layers", bytes([1]) + struct.pack("<II", len(LAYER1), 0) + LAYER1 + LAYER2)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                     "rootfs": {"type": "layers", "diff_ids": [sha(LAYER1)]}}).encode()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": sha(CONFIG), "size": len(CONFIG)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": sha(LAYER1), "size": len(LAYER1)}]}).encode()
INDEX = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": sha(MANIFEST), "size": len(MANIFEST),
                                   "platform": {"architecture": "amd64", "os": "linux"},
                                   "annotations": {"org.opencontainers.image.ref.name": "fuzz:1"}},
                                  {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": sha(b"arm"), "size": 3,
                                   "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}]}).encode()


def archive(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def load():
    cfg = sha(CONFIG)[7:]
    docker = archive([(cfg + ".json", CONFIG), ("layer1/layer.tar", LAYER1),
                      ("manifest.json", json.dumps([{"Config": cfg + ".json", "RepoTags": ["fuzz:latest"],
                                                     "Layers": ["layer1/layer.tar"]}]).encode())])
    put("image_load", "docker-archive", docker)
    put("image_load", "docker-archive.gz", gzip.compress(docker, mtime=0))
    index = json.dumps({"schemaVersion": 2, "manifests": [json.loads(INDEX)["manifests"][0]]}).encode()
    oci = archive([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                   ("blobs/sha256/" + sha(MANIFEST)[7:], MANIFEST), ("blobs/sha256/" + cfg, CONFIG),
                   ("blobs/sha256/" + sha(LAYER1)[7:], LAYER1)])
    put("image_load", "oci-layout", oci)


def manifests():
    def three(top, manifest, config):
        return struct.pack("<HH", len(top), len(manifest)) + top + manifest + config
    put("registry_manifest", "index", three(INDEX, MANIFEST, CONFIG))
    put("registry_manifest", "manifest", three(MANIFEST, MANIFEST, CONFIG))


def text_seeds():
    for i, s in enumerate(["alpine", "docker.io/library/alpine:3.19", "localhost:5000/a/b_c-d.e:v1",
                           "ghcr.io/x/y@" + sha(b"y"), "[::1]:5000/img:tag@" + sha(b"z"), "linux/arm64/v8"]):
        put("image_reference", "ref%d" % i, s.encode())
    def frame(v):
        b = json.dumps(v).encode()
        return struct.pack(">I", len(b)) + b
    put("agent_frame", "hello-request", frame({"version": 4, "agent": "hk-agent 0.1.0", "started_ns": 1, "ready_ns": 2})
        + frame({"id": 3, "op": "signal", "process": "main", "signal": 15}))
    put("agent_frame", "responses", frame({"id": 3, "ok": {"reply": "done"}})
        + frame({"id": 4, "error": {"kind": "not_found", "message": "no"}})
        + frame({"id": 5, "ok": {"reply": "exited", "code": 3}}))
    put("agent_frame", "create", frame({"id": 1, "op": "create_process", "process": "main", "argv": ["sh"],
                                        "env": ["A=1"], "cwd": "/", "user": None, "tty": {"rows": 24, "cols": 80},
                                        "rlimits": [{"resource": "nofile", "soft": 1, "hard": 2}]}))
    put("dockerfile", "multi-stage", b"""# syntax=docker/dockerfile:1
# escape=\\
ARG BASE=alpine:3.19
FROM ${BASE} AS build
ARG N=3
ENV A=1 B="two words" C=${A:-x}${B:+y}
WORKDIR /src/$A
COPY --chown=1:1 --chmod=644 a* b/ /dst/
RUN --mount=type=cache,target=/root/.cache,id=c,sharing=locked \\
    echo "$A" && \\
    ls
RUN <<EOF
#!/bin/sh
echo hi
EOF
COPY <<-EOT /f
\tbody $A
EOT
FROM scratch
COPY --from=build /dst /
HEALTHCHECK --interval=5s CMD ["true"]
ONBUILD RUN echo ${N}
EXPOSE 80/tcp ${N}
CMD ["/bin/sh", "-c", "echo"]
""")
    put("dockerfile", "escape", b"# escape=`\nFROM alpine\nRUN echo a `\n  b\nENV X=${Y:-`$z}\nUSER ${X%%b}\n")
    put("dockerignore", "patterns", b"# comment\n*.log\n!keep.log\n**/node_modules\n/build/\n[a-c]?.txt\n\\!x\n\0"
        b"a.log\nkeep.log\nx/node_modules/y\nbuild/out\nb1.txt\n")


blk(); vsock(); net(); fs(); mmio(); ext4(); load(); manifests(); text_seeds()
