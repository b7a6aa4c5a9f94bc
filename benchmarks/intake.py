"""Intake: unpacking and verifying a large BagIt crate, against ``sha512sum`` over its files.

Makes a BagIt crate (default 1 GiB in 10,000 files of random bytes, sha-512
manifests) as a folder and as a ZIP_STORED zip, in a temporary folder under
/tmp, removed at the end. Then, alternating: ``sha512sum`` over the payload
files (the baseline), ``open_crate`` + ``verify_bag`` of the folder and of the
zip, each of ours in its own process reporting its peak RSS. ``verify_bag`` is
called as the pipeline calls it (``cratebridge.api``), with the digests taken while
unpacking, so the payload is read once. The figure is throughput as a fraction of
sha512sum's; a smaller crate (default 256 MiB, same file size) shows whether peak
memory grows with the crate. A second reference, in the same rounds: ``cp -r``
of the bag folder, what the file system alone costs to make the same files
(no hashing), shown, not part of the target.

Nothing is deleted until every figure is taken (it needs about 11 times the
two crates' size free in /tmp). On an ext4 without a journal (this machine's),
creating a file skips every inode freed in the last minute (five while its
table block is dirty), one buffer lookup each: right after 10,000 files are
deleted, making 10,000 more costs seconds of system time (``perf``: ext4_create
-> recently_deleted), for ``cp -r`` as for the intake. Deleting each round's
copy before the next measured that, not the intake. For the same reason each
figure is taken after an ``os.sync()`` (untimed): with gigabytes of the
benchmark's own writes still to go to the disk, the kernel holds back every
writer, and a figure taken then is the disk's write-back.

Targets (issue 17): throughput >= 0.6 of sha512sum over the same files; peak RSS
< 200 MB and flat, i.e. not growing with the crate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from _common import CannotMeasure, main_guard, median, verdict

MIN_THROUGHPUT = 0.6
MAX_RSS_MB = 200.0
GROWTH_MB = 20.0  # "not growing": the big crate's peak within this of the small one's


def make_bag(bag: Path, total: int, files: int, seed: int) -> int:
    """Write a BagIt bag of ``files`` random files adding up to ``total`` bytes; return bytes."""
    rng = random.Random(seed)
    data = bag / "data"
    size = total // files
    manifest = []
    for i in range(files):
        rel = f"data/part-{i // 1000:02d}/file-{i:05d}.bin"
        path = bag / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = rng.randbytes(size)
        path.write_bytes(blob)
        manifest.append(f"{hashlib.sha512(blob).hexdigest()}  {rel}\n")
    metadata = json.dumps({"@context": "https://w3id.org/ro/crate/1.2/context", "@graph": []})
    (data / "ro-crate-metadata.json").write_text(metadata)
    manifest.append(f"{hashlib.sha512(metadata.encode()).hexdigest()}  "
                    "data/ro-crate-metadata.json\n")
    octets = size * files + len(metadata.encode())
    tags = {
        "bagit.txt": "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        "bag-info.txt": f"External-Identifier: urn:uuid:00000000-0000-4000-8000-000000000000\n"
                        f"Payload-Oxum: {octets}.{files + 1}\n",
        "manifest-sha512.txt": "".join(manifest),
    }
    for name, text in tags.items():
        (bag / name).write_text(text)
    (bag / "tagmanifest-sha512.txt").write_text("".join(
        f"{hashlib.sha512(text.encode()).hexdigest()}  {name}\n" for name, text in tags.items()))
    return octets


def zip_bag(bag: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(bag.rglob("*")):
            if path.is_file():
                archive.write(path, f"{bag.name}/{path.relative_to(bag).as_posix()}")


# -- the child: one intake in its own process --------------------------------------------


def child(source: Path, dest: Path) -> dict[str, float]:
    from cratebridge.intake import IntakeLimits, open_crate, verify_bag

    start = time.perf_counter()
    opened = open_crate(source, dest, IntakeLimits(max_total_bytes=4 * 1024**3))
    if opened.bag_dir is None:
        raise SystemExit("no bag found")
    verify_bag(opened.bag_dir, known=opened.digests)  # as cratebridge.api does
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ours(source: Path, dest: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", str(source), str(dest)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CannotMeasure(f"intake of {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sha512sum(bag: Path) -> float:
    if shutil.which("sha512sum") is None:
        raise CannotMeasure("sha512sum is not on PATH")
    listing = "\0".join(str(p.relative_to(bag)) for p in sorted((bag / "data").rglob("*"))
                        if p.is_file())
    start = time.perf_counter()
    done = subprocess.run(["xargs", "-0", "sha512sum"], input=listing.encode(), cwd=bag,
                          stdout=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise CannotMeasure(f"sha512sum exited {done.returncode}")
    return elapsed


def copy_tree(bag: Path, dest: Path) -> float:
    """``cp -r`` of the bag folder into ``dest``: the file system's part."""
    start = time.perf_counter()
    done = subprocess.run(["cp", "-r", str(bag), str(dest)], check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise CannotMeasure(f"cp -r exited {done.returncode}")
    return elapsed


def measure(scratch: Path, name: str, total: int, files: int, rounds: int) -> dict[str, object]:
    bag = scratch / name / name
    bag.mkdir(parents=True)
    octets = make_bag(bag, total, files, seed=total)
    archive = scratch / name / f"{name}.zip"
    zip_bag(bag, archive)
    sha, copied, folder, zipped = [], [], [], []
    for r in range(rounds):
        # each starts with nothing left to write back (see above), untimed
        os.sync()
        sha.append(sha512sum(bag))
        os.sync()
        copied.append(copy_tree(bag, scratch / name / f"copied-{r}"))
        os.sync()
        folder.append(ours(bag, scratch / name / f"unpacked-{r}"))
        os.sync()
        zipped.append(ours(archive, scratch / name / f"unzipped-{r}"))
    return {"bytes": octets, "files": files, "sha": sha, "cp": copied, "folder": folder,
            "zip": zipped}


def report(label: str, r: dict[str, object]) -> tuple[float, float, float]:
    mib = r["bytes"] / 1024**2
    sha = median(r["sha"])
    print(f"  {label}: {r['files']} files, {mib:.0f} MiB")
    print(f"    sha512sum             median {sha:6.2f} s  {mib / sha:7.0f} MiB/s (baseline)")
    cp = median(r["cp"])
    print(f"    cp -r                 median {cp:6.2f} s  {mib / cp:7.0f} MiB/s "
          f"(making the files alone; sha512sum then cp -r: {sha + cp:.2f} s)")
    worst = 1.0
    peaks = []
    for kind in ("folder", "zip"):
        secs = median([x["seconds"] for x in r[kind]])
        peak = max(x["peak_rss_mb"] for x in r[kind])
        peaks.append(peak)
        ratio = sha / secs
        worst = min(worst, ratio)
        print(f"    open_crate+verify_bag {kind:6s} median {secs:6.2f} s  {mib / secs:7.0f} MiB/s  "
              f"throughput ratio {ratio:4.2f}  peak RSS {peak:5.0f} MB")
    return worst, max(peaks), mib


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the big crate")
    parser.add_argument("--small-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=10_000, help="files in the big crate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    # every copy stays until the end (see above)
    need = (2 + 3 * args.rounds) * (args.mib + args.small_mib) * 1024**2 * 1.05
    free = shutil.disk_usage("/tmp").free
    if free < need:
        raise CannotMeasure(f"/tmp has {free / 1024**3:.1f} GiB free, {need / 1024**3:.1f} needed")
    small_files = max(1, args.files * args.small_mib // args.mib)
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-bench-intake-", dir="/tmp"))
    try:
        small = measure(scratch, "small", args.small_mib * 1024**2, small_files, args.rounds)
        big = measure(scratch, "big", args.mib * 1024**2, args.files, args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"intake, median of {args.rounds} alternating rounds, {os.cpu_count()} cores")
    _, small_peak, _ = report("small crate", small)
    ratio, big_peak, mib = report("big crate", big)
    print(f"  peak RSS growth from {args.small_mib} to {mib:.0f} MiB: "
          f"{big_peak - small_peak:+.0f} MB")
    ok = ratio >= MIN_THROUGHPUT and big_peak < MAX_RSS_MB and big_peak - small_peak < GROWTH_MB
    print(verdict(ok, f"{mib:.0f} MiB crate: throughput ratio {ratio:.2f} (>= {MIN_THROUGHPUT}), "
                      f"peak RSS {big_peak:.0f} MB (< {MAX_RSS_MB:.0f} MB), growth "
                      f"{big_peak - small_peak:+.0f} MB (< {GROWTH_MB:.0f} MB)"))
    return 0


if __name__ == "__main__":
    main_guard(run)
