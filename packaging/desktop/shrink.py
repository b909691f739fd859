"""Shrink a built bundle without changing what it runs: strip symbol tables where safe, link duplicates.

    python3 packaging/desktop/shrink.py OUT/dist/mbdl      (build.sh runs it; Linux only)

1. `strip --strip-unneeded` on every ELF file (libraries, extension modules, the executable) of the
one-folder app, each on a copy first. A stripped copy replaces the original only when it is
smaller and its loadable segments are intact: the same number of PT_LOAD segments and each one's
file offset congruent to its address modulo its alignment. Libraries that auditwheel grafted into
a wheel (numpy.libs/, scipy.libs/, ...) were rewritten by patchelf, and binutils' strip can move
their extra segments off the page grid ("ELF load command address/offset not page-aligned" when
numpy imports); those copies fail the check and the original stays.
2. Libraries that two wheels graft under the same hashed name with the same bytes (numpy.libs/ and
scipy.libs/ both carry libgfortran-040039e1-0352e75f.so.5.0.0 and its libquadmath): the second copy
becomes a relative symlink to the first (the loader maps one of them anyway: same soname).
Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

PT_LOAD = 1


def load_segments(path: Path) -> list[tuple[int, int, int]] | None:
    """(offset, vaddr, align) of each PT_LOAD of a 64-bit little-endian ELF file; None if not one."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segs = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr = struct.unpack_from("<IIQQ", table, i * phentsize)
        align, = struct.unpack_from("<Q", table, i * phentsize + 48)
        if p_type == PT_LOAD:
            segs.append((offset, vaddr, align))
    return segs


def intact(before: list, after: list | None) -> bool:
    return (after is not None and len(after) == len(before)
            and all(a <= 1 or off % a == va % a for off, va, a in after))


def strip_folder(folder: Path, strip: str = "strip") -> tuple[int, int, list[str]]:
    """Strip every ELF file under `folder` where it is safe: (bytes saved, files stripped, kept)."""
    saved, n, kept = 0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            before = load_segments(path)
            if not before:
                continue
            copy = Path(tmp) / "elf"
            shutil.copyfile(path, copy)
            done = subprocess.run([strip, "--strip-unneeded", str(copy)], capture_output=True)
            size0, size1 = path.stat().st_size, copy.stat().st_size
            if done.returncode != 0 or size1 >= size0:
                continue
            if not intact(before, load_segments(copy)):
                kept.append(str(path.relative_to(folder)))
                continue
            mode = path.stat().st_mode
            shutil.copyfile(copy, path)
            os.chmod(path, mode)
            saved += size0 - size1
            n += 1
    return saved, n, kept


def link_duplicates(folder: Path) -> tuple[int, list[str]]:
    """Replace each *.libs/ library that another *.libs/ folder holds byte for byte under the same
    name by a relative symlink to that one: (bytes saved, the linked paths)."""
    first: dict[tuple[str, str], Path] = {}
    saved, linked = 0, []
    for path in sorted(folder.rglob("*.libs/*")):
        if path.is_symlink() or not path.is_file():
            continue
        key = (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        if key not in first:
            first[key] = path
            continue
        size = path.stat().st_size
        path.unlink()
        path.symlink_to(os.path.relpath(first[key], path.parent))
        saved += size
        linked.append(str(path.relative_to(folder)))
    return saved, linked


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: shrink.py DIST_FOLDER (an existing folder, e.g. OUT/dist/mbdl)", file=sys.stderr)
        return 2
    folder = Path(args[0])
    saved, linked = link_duplicates(folder)
    print(f"shrink.py: {len(linked)} duplicate libraries linked, {saved / 2**20:.1f} MiB saved"
          + (f": {', '.join(linked)}" if linked else ""))
    if shutil.which("strip") is None:
        print("shrink.py: no `strip` on PATH (binutils); bundle left unstripped", file=sys.stderr)
        return 0
    saved, n, kept = strip_folder(folder)
    print(f"shrink.py: {n} ELF files stripped, {saved / 2**20:.1f} MiB saved; "
          f"{len(kept)} left as they were (stripping would misalign their segments)"
          + (f": {', '.join(kept)}" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
