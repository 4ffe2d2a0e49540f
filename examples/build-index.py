#!/usr/bin/env python3
"""Rebuilds dist/<ref>-<version>.tar.gz and index.json from the packs in packs/.

Run it after changing a pack: `python3 examples/build-index.py` (it runs
`attune-packs index entry`; set ATTUNE_PACKS to use another binary). The archives are
byte-for-byte reproducible: sorted entries, no timestamps, owners or gzip name. The
CLI test `examples_match_the_index` fails when they drift from the pack directories.
"""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CLI = os.environ.get("ATTUNE_PACKS", "attune-packs")
# Dependencies first, so the index reads in install order.
PACKS = ["hello", "welcome", "hello_node"]


def version_of(pack_dir):
    with open(os.path.join(pack_dir, "pack.yaml")) as f:
        for line in f:
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip().strip("\"'")
    sys.exit("%s/pack.yaml has no version" % pack_dir)


def archive(pack_dir, ref, out):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(rel):
            path = os.path.join(pack_dir, rel) if rel else pack_dir
            info = tar.gettarinfo(path, arcname=os.path.join(ref, rel) if rel else ref)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

        add("")
        for root, dirs, files in os.walk(pack_dir):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "node_modules"))
            rel_root = os.path.relpath(root, pack_dir)
            for name in dirs + sorted(files):
                add(os.path.normpath(os.path.join(rel_root, name)))
    with open(out, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
            gz.write(buf.getvalue())


def main():
    os.makedirs(os.path.join(HERE, "dist"), exist_ok=True)
    entries = []
    for ref in PACKS:
        pack_dir = os.path.join(HERE, "packs", ref)
        rel = "dist/%s-%s.tar.gz" % (ref, version_of(pack_dir))
        archive(pack_dir, ref, os.path.join(HERE, rel))
        # A relative archive URL is resolved against the index's own URL.
        out = subprocess.check_output(
            [CLI, "--json", "index", "entry", os.path.join(HERE, rel), "--archive-url", rel]
        )
        entries.append(json.loads(out))
    index = {
        "registry_name": "attune-packs examples",
        "registry_url": "https://github.com/attune-system/attune-packs/tree/main/examples",
        "version": "1.0",
        "last_updated": "2026-01-01T00:00:00Z",
        "packs": entries,
    }
    with open(os.path.join(HERE, "index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
