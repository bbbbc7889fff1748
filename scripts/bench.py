#!/usr/bin/env python3
"""Benchmark diskimg against qemu-img on the same workloads, side by side.

Builds the workload images with qemu-img/qemu-io in a work directory, builds
diskimg in release mode (unless --diskimg is given), then runs diskimg and
qemu-img alternately for one untimed warm-up round and N timed rounds, and prints, per workload, the median wall
time of each, the ratio diskimg/qemu-img and the peak RSS of each. Outputs are
checked once per workload (diskimg's must equal qemu-img's); a failing or
wrong diskimg is reported in the table instead of crashing the script.

See scripts/README.md.
"""

import argparse
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
GIB = 1 << 30


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def need(tool):
    path = shutil.which(tool)
    if not path:
        sys.exit(f"bench: {tool} is not installed (QEMU's tools are the reference); install qemu-utils")
    return path


def run(args, **kw):
    """Runs a build step; fails loudly."""
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if r.returncode != 0:
        sys.exit(f"bench: `{' '.join(args[:6])} ...` failed (rc {r.returncode}): {r.stderr.decode(errors='replace')[:2000]}")
    return r


def qemu_io(img, fmt, cmds, batch=4000):
    """Runs qemu-io commands in batches (cache=unsafe: no flush per allocation)."""
    for i in range(0, len(cmds), batch):
        args = ["qemu-io", "-t", "unsafe", "-f", fmt]
        for c in cmds[i:i + batch]:
            args += ["-c", c]
        args.append(img)
        r = run(args)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        if "error" in out or "failed" in out:
            sys.exit(f"bench: qemu-io reported an error: {out[:2000]}")


# --- workload builders -------------------------------------------------------------------

def build_scattered(path, size, seed):
    """(a) qcow2, 64 KiB clusters: ~40% data in 1-4 MiB extents at random
    places, ~5% zero clusters (write -z), the rest unallocated."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
    r = random.Random(seed)
    cmds = []
    pos = 0
    while pos < size:
        length = min(r.randint(16, 64) * 65536, size - pos)  # 1-4 MiB
        x = r.random()
        if x < 0.40:
            cmds.append(f"write -q -P {r.randint(1, 255)} {pos} {length}")
        elif x < 0.45:
            cmds.append(f"write -q -z {pos} {length}")
        pos += length
    qemu_io(path, "qcow2", cmds, batch=500)


def text_block(r, size):
    """Text-like, compressible bytes (random words from a random vocabulary)."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(r.choice(letters) for _ in range(r.randint(2, 10))) for _ in range(3000)]
    words = []
    n = 0
    while n < size:
        w = r.choice(vocab)
        sep = "\n" if r.random() < 0.08 else " "
        words.append(w + sep)
        n += len(w) + 1
    return "".join(words).encode()[:size]


def build_compressed(path, size, ctype, seed, raw_cache):
    """(b) qcow2 written by `qemu-img convert -c` from text-like raw data."""
    if not os.path.exists(raw_cache):
        r = random.Random(seed)
        block = text_block(r, 4 * MIB)
        with open(raw_cache + ".tmp", "wb") as f:
            for i in range(size // (4 * MIB)):
                k = r.randrange(len(block))
                chunk = block[k:] + block[:k]
                f.write(b"block %08d\n" % i + chunk[15:])
        os.rename(raw_cache + ".tmp", raw_cache)
    run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", f"compression_type={ctype}",
         raw_cache, path])


def build_many_clusters(path, size, clusters, seed):
    """(c) a big sparse qcow2 with 4 KiB clusters and `clusters` scattered
    allocated clusters, each written with one 4 KiB qemu-io write."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, str(size)])
    r = random.Random(seed)
    chosen = set()
    total = size // 4096
    while len(chosen) < clusters:
        chosen.add(r.randrange(total))
    cmds = [f"write -q -P {c % 255 + 1} {c * 4096} 4096" for c in sorted(chosen)]
    r.shuffle(cmds)
    qemu_io(path, "qcow2", cmds, batch=5000)


def build_chain(path, size, seed):
    """(f) a 3-deep chain: a scattered base and two overlays, each with 10%
    of the disk rewritten at random places; `path` is the top."""
    base = path + ".base.qcow2"
    mid = path + ".mid.qcow2"
    build_scattered(base, size, seed)
    r = random.Random(seed + 1)
    for lower, upper in ((base, mid), (mid, path)):
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.basename(lower), "-F", "qcow2", upper])
        cmds = []
        for _ in range(size // 10 // (1 * MIB)):
            pos = r.randrange(size // 65536) * 65536
            length = min(r.randint(4, 32) * 65536, size - pos)
            cmds.append(f"write -q -P {r.randint(1, 255)} {pos} {length}")
        qemu_io(upper, "qcow2", cmds, batch=500)


# --- measurement -------------------------------------------------------------------------

TIME = shutil.which("time") and os.path.exists("/usr/bin/time") and "/usr/bin/time"


# The balloon's free page reporting (a VM returning free guest memory to its
# host) publishes how much it has reported so far here, on kernels that have it.
REPORTED_KIB = "/sys/module/page_reporting/parameters/reported_kib"


def wait_for_quiet_page_reporting(quiet=2.5, limit=30.0):
    """Waits (untimed) until the VM's free page reporting has reported nothing
    for `quiet` seconds (at most `limit` seconds), and returns the seconds
    waited; 0 where the kernel does not report free pages.

    Why: removing a 1.6 GiB output frees that much memory at once, which
    starts a reporting pass a moment later. A run started right after the
    removal reuses the freed pages while they are still backed by the host
    and is fast, unless the pass of the *previous* removal lands in it: the
    pass then hands pages to the host under the run, which pays the host's
    first-touch fault on every page it writes. Without this wait, runs
    alternated fast and slow by their position in the sequence, whatever
    the program (1.6 GiB writes, 8 in a row: 0.38-0.72 s and 1.82-2.86 s in
    turn, the slow ones with 600 MiB reported during the run); with it, 8 of
    8 took 0.38-0.61 s. Waiting after the removal instead makes every run
    slow (2.6-3.3 s: the pass gives the freed memory back first)."""
    try:
        with open(REPORTED_KIB) as f:
            last = f.read()
    except OSError:
        return 0.0
    start = since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < limit:
        time.sleep(0.1)
        with open(REPORTED_KIB) as f:
            now = f.read()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - start


def measure(argv, cwd, stdout_path=None):
    """Runs argv once; returns (rc, wall seconds, peak RSS KiB or None,
    CPU seconds (user + system) or None, stderr)."""
    rss_file = os.path.join(cwd, ".rss")
    full = [TIME, "-f", "%M %U %S", "-o", rss_file] + argv if TIME else argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    try:
        p = subprocess.run(full, cwd=cwd, stdout=out, stderr=subprocess.PIPE)
    finally:
        if stdout_path:
            out.close()
    wall = time.perf_counter() - t0
    rss = cpu = None
    if TIME:
        try:
            with open(rss_file) as f:
                m, u, s = f.read().strip().splitlines()[-1].split()
            rss, cpu = int(m), float(u) + float(s)
        except (OSError, ValueError, IndexError):
            rss = cpu = None
    else:
        # ru_maxrss of all children so far: only meaningful when it grew.
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss = after if after > before else None
    err = p.stderr.decode(errors="replace")
    if TIME and p.returncode != 0:
        # /usr/bin/time prints "Command exited with non-zero status N" into -o; keep stderr clean.
        pass
    return p.returncode, wall, rss, cpu, err


def same_file(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def same_image(a, b):
    """qcow2 outputs differ in layout: QEMU judges them (same guest bytes,
    and a clean check of diskimg's)."""
    same = subprocess.run(["qemu-img", "compare", "-q", a, b]).returncode == 0
    clean = subprocess.run(["qemu-img", "check", "-q", b]).returncode == 0
    return same and clean


class Workload:
    def __init__(self, name, desc, args, output=None, stdout=False, prepare=None, run_time=False,
                 verify=None, image=False):
        self.name = name
        self.desc = desc
        self.args = args          # argv after the program name; "{out}" = output path, "{img}" = prepared image
        self.output = output      # output file name pattern (convert)
        self.stdout = stdout      # compare stdout (map)
        self.image = image        # outputs are images: compare guest bytes, report sizes
        self.prepare = prepare    # prepare(who) -> image path, run untimed before every run (bench -w)
        self.run_time = run_time  # time = the "Run completed in S seconds." figure (bench), stdout compared masked
        self.verify = verify      # verify(image_qemu, image_diskimg) -> None or a problem, once


RUN_COMPLETED = re.compile(rb"^Run completed in ([0-9]+\.[0-9]+) seconds\.$", re.M)


def masked(path):
    with open(path, "rb") as f:
        return RUN_COMPLETED.sub(b"Run completed in T seconds.", f.read())


def bench(work, diskimg, qemu_img, rounds):
    w, d, q = work, diskimg, qemu_img
    res = {"diskimg": [], "qemu-img": [], "rss_d": [], "rss_q": [], "cpu_d": [], "cpu_q": [],
           "status": "ok", "sizes": None, "waited": 0.0}
    cwd = args_dir
    # Round 0 is a warm-up (untimed; its outputs are the ones checked): it
    # brings the source into the page cache and leaves each program an
    # output whose memory its first timed run reuses (see below).
    for rnd in range(rounds + 1):
        # Alternate who goes first so caches favour neither.
        order = [("qemu-img", q), ("diskimg", d)] if rnd % 2 == 0 else [("diskimg", d), ("qemu-img", q)]
        for who, prog in order:
            out = os.path.join(cwd, f"out.{who}") if w.output else None
            img = w.prepare(who) if w.prepare else ""
            argv = [prog] + [a.replace("{out}", out or "").replace("{img}", img) for a in w.args]
            sout = os.path.join(cwd, f"stdout.{who}") if (w.stdout or w.run_time) else None
            # Untimed: write back the dirty pages the previous run left, so
            # no run pays for the other program's output (measured: a 1.6 GiB
            # qcow2 written just before made the next convert 5-10x slower,
            # whichever program ran it).
            os.sync()
            # Untimed, for runs that write: let a reporting pass started by
            # an earlier removal finish before this run rather than during
            # it (see wait_for_quiet_page_reporting).
            if w.output or w.prepare:
                res["waited"] += wait_for_quiet_page_reporting()
            # Then remove this program's previous output, right before the
            # run: the run reuses the page-cache memory that frees. Removed
            # earlier (before the sync), those pages sit free long enough
            # for a VM's balloon (free page reporting) to hand them back to
            # the host, and the run then pays the host's first-touch faults
            # on every page it writes: measured here, 6 converts of a 4 GiB
            # qcow2 to raw took 0.50-4.28 s that way and 0.55-0.92 s this
            # way. Both programs get the same treatment.
            if out and os.path.exists(out):
                os.remove(out)
            rc, wall, rss, cpu, err = measure(argv, cwd, sout)
            if rc == 0 and w.run_time:
                with open(sout, "rb") as f:
                    m = RUN_COMPLETED.search(f.read())
                if m:
                    wall = float(m.group(1))
                elif who == "diskimg":
                    res["status"] = "diskimg printed no 'Run completed' line"
            if rc != 0:
                if who == "qemu-img":
                    sys.exit(f"bench: qemu-img failed on {w.name} (rc {rc}): {err[:1000]}")
                first = (err.strip().splitlines() or [""])[0]
                res["status"] = f"diskimg FAILED rc {rc}: {first[:120]}"
                continue
            if rnd > 0:
                res[who].append(wall)
                if cpu is not None:
                    res["cpu_d" if who == "diskimg" else "cpu_q"].append(cpu)
            if rss is not None:
                res["rss_d" if who == "diskimg" else "rss_q"].append(rss)
        if res["status"] != "ok":
            break
        if rnd == 0:
            # Check the answer once: diskimg must produce qemu-img's output.
            oq, od = os.path.join(cwd, "out.qemu-img"), os.path.join(cwd, "out.diskimg")
            if w.image:
                if not same_image(oq, od):
                    res["status"] = "diskimg image DIFFERS from qemu-img's (or fails qemu-img check)"
                res["sizes"] = (os.path.getsize(od), os.path.getsize(oq))
            elif w.output and not same_file(oq, od):
                res["status"] = "diskimg output DIFFERS from qemu-img's"
            if w.stdout and not same_file(os.path.join(cwd, "stdout.qemu-img"), os.path.join(cwd, "stdout.diskimg")):
                res["status"] = "diskimg stdout DIFFERS from qemu-img's"
            if w.run_time and masked(os.path.join(cwd, "stdout.qemu-img")) != masked(os.path.join(cwd, "stdout.diskimg")):
                res["status"] = "diskimg report DIFFERS from qemu-img's"
            if w.verify and res["status"] == "ok":
                problem = w.verify(w.prepare("qemu-img", fresh=False), w.prepare("diskimg", fresh=False))
                if problem:
                    res["status"] = problem
    for who in ("qemu-img", "diskimg"):
        p = os.path.join(cwd, f"out.{who}")
        if os.path.exists(p):
            os.remove(p)
    return res


def fmt_s(v):
    return f"{v:.3f}" if v is not None else "-"


def fmt_run(v):
    wall, cpu = v
    return f"{wall:.3f}" + (f"/{cpu:.2f}" if cpu is not None else "")


def fmt_cpu(v):
    return f"{v:.2f}" if v is not None else "-"


def fmt_rss(v):
    return f"{max(v) / 1024:.1f}" if v else "-"


def main():
    global args_dir
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.environ.get("DISKIMG_BENCH_DIR", "/tmp/diskimg-bench"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (images are reused next time)")
    ap.add_argument("--diskimg", help="use this diskimg binary instead of building target/release/diskimg")
    ap.add_argument("--only", help="comma-separated workloads: a,b,c,d (default all); "
                    "d = every bench workload, or single ones such as d-read-seq-1-raw")
    ap.add_argument("--quick", action="store_true", help="1/16 sizes, to check the script itself")
    args = ap.parse_args()

    for t in ("qemu-img", "qemu-io", "cmp"):
        need(t)
    qemu_img = shutil.which("qemu-img")
    scale = 16 if args.quick else 1
    only = set((args.only or "a,b,c,d,e,f,g").split(","))

    if args.diskimg:
        diskimg = os.path.abspath(args.diskimg)
    else:
        log("building diskimg (cargo build --release -p diskimg-cli)")
        r = subprocess.run(["cargo", "build", "--release", "-p", "diskimg-cli"], cwd=ROOT)
        if r.returncode != 0:
            sys.exit("bench: cargo build --release failed")
        diskimg = os.path.join(ROOT, "target", "release", "diskimg")

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    args_dir = work
    tag = "quick" if args.quick else "full"

    def ready(name, builder):
        path = os.path.join(work, f"{name}.{tag}.qcow2")
        if not os.path.exists(path + ".done"):
            log(f"building {os.path.basename(path)}")
            t0 = time.time()
            if os.path.exists(path):
                os.remove(path)
            builder(path)
            open(path + ".done", "w").close()
            log(f"  built in {time.time() - t0:.1f} s, {os.path.getsize(path) / MIB:.0f} MiB file")
        return path

    def ready_file(path, builder):
        if not os.path.exists(path + ".done"):
            log(f"building {os.path.basename(path)}")
            t0 = time.time()
            if os.path.exists(path):
                os.remove(path)
            builder(path)
            open(path + ".done", "w").close()
            log(f"  built in {time.time() - t0:.1f} s")
        return path

    loads = []
    if "a" in only:
        p = ready("scattered-4g", lambda p: build_scattered(p, 4 * GIB // scale, 1))
        loads.append(Workload("a convert 4G scattered", "", ["convert", "-m", "16", "-W", "-O", "raw", p, "{out}"], output=True))
    if "b" in only:
        raw = os.path.join(work, f"text-1g.{tag}.raw")
        for ct in ("zlib", "zstd"):
            p = ready(f"compressed-1g-{ct}", lambda p, ct=ct: build_compressed(p, GIB // scale, ct, 2, raw))
            loads.append(Workload(f"b convert 1G {ct}", "", ["convert", "-m", "16", "-W", "-O", "raw", p, "{out}"], output=True))
    if "e" in only:
        raw = os.path.join(work, f"text-1g.{tag}.raw")
        if not os.path.exists(raw):
            ready("compressed-1g-zlib", lambda p: build_compressed(p, GIB // scale, "zlib", 2, raw))
        if not os.path.exists(raw):
            build_compressed(os.path.join(work, "tmp.qcow2"), GIB // scale, "zlib", 2, raw)
        for ct in ("zlib", "zstd"):
            loads.append(Workload(f"e convert -c 1G text {ct}", "",
                                  ["convert", "-c", "-m", "16", "-W", "-f", "raw", "-O", "qcow2",
                                   "-o", f"compression_type={ct}", raw, "{out}"], output=True, image=True))
    if "g" in only:
        src = ready("scattered-4g", lambda p: build_scattered(p, 4 * GIB // scale, 1))
        raw4 = os.path.join(work, f"scattered-4g.{tag}.raw")
        if not os.path.exists(raw4):
            run(["qemu-img", "convert", "-O", "raw", src, raw4])
        loads.append(Workload("g convert 4G sparse raw -> qcow2", "",
                              ["convert", "-m", "16", "-W", "-f", "raw", "-O", "qcow2", raw4, "{out}"],
                              output=True, image=True))
    if "f" in only:
        top = ready("chain-2g", lambda p: build_chain(p, 2 * GIB // scale, 4))
        loads.append(Workload("f flatten 3-deep 2G chain -> qcow2", "",
                              ["convert", "-m", "16", "-W", "-O", "qcow2", top, "{out}"],
                              output=True, image=True))
    if "c" in only:
        p = ready("map-64g", lambda p: build_many_clusters(p, 64 * GIB // scale, 250_000 // scale, 3))
        loads.append(Workload("c map 64G 250k clusters", "", ["map", "--output=json", p], stdout=True))

    loads += bench_workloads(work, tag, scale, only, ready_file)

    rows = []
    runs = []
    waited = 0.0
    for w in loads:
        log(f"running {w.name} ({args.rounds} rounds)")
        r = bench(w, diskimg, qemu_img, args.rounds)
        waited += r["waited"]
        md = statistics.median(r["diskimg"]) if r["diskimg"] else None
        mq = statistics.median(r["qemu-img"]) if r["qemu-img"] else None
        ratio = f"{md / mq:.2f}" if md and mq else "-"
        status = r["status"]
        if r["sizes"]:
            sd, sq = r["sizes"]
            status += f" (output {sd / MIB:.1f} MiB vs {sq / MIB:.1f} MiB, {sd / sq:.3f}x)"
        cd = statistics.median(r["cpu_d"]) if r["cpu_d"] else None
        cq = statistics.median(r["cpu_q"]) if r["cpu_q"] else None
        rows.append((w.name, fmt_s(md), fmt_s(mq), ratio, fmt_cpu(cd), fmt_cpu(cq),
                     fmt_rss(r["rss_d"]), fmt_rss(r["rss_q"]), status))
        runs.append((w.name, list(zip(r["diskimg"], r["cpu_d"] or [None] * len(r["diskimg"]))),
                     list(zip(r["qemu-img"], r["cpu_q"] or [None] * len(r["qemu-img"])))))
        for f in ("stdout.diskimg", "stdout.qemu-img", ".rss"):
            p = os.path.join(work, f)
            if os.path.exists(p):
                os.remove(p)

    head = ("workload", "diskimg s", "qemu-img s", "ratio", "diskimg cpu", "qemu-img cpu",
            "diskimg MiB", "qemu-img MiB", "status")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    line = lambda x: "  ".join(str(v).ljust(widths[i]) for i, v in enumerate(x))
    print(f"diskimg: {diskimg}")
    print(f"qemu-img: {subprocess.run([qemu_img, '--version'], stdout=subprocess.PIPE).stdout.decode().splitlines()[0]}")
    print(f"rounds: {args.rounds} timed after 1 warm-up (median wall time; cpu = median user + system "
          f"seconds; peak RSS = max over rounds; "
          f"RSS via {'/usr/bin/time -f %M' if TIME else 'getrusage(RUSAGE_CHILDREN)'})")
    if os.path.exists(REPORTED_KIB):
        print(f"free page reporting: before each run that writes, waited (untimed) until it had been "
              f"quiet for 2.5 s: {waited:.0f} s in all")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    print()
    print("every timed run, in seconds, sorted, each as wall/cpu (the noise behind each median):")
    for name, d, q in runs:
        print(f"  {name}")
        print(f"    diskimg:  {' '.join(fmt_run(v) for v in sorted(d, key=lambda x: x[0]))}")
        print(f"    qemu-img: {' '.join(fmt_run(v) for v in sorted(q, key=lambda x: x[0]))}")

    if not args.keep:
        log(f"removing {work} (use --keep to keep the images)")
        shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in rows if not r[-1].startswith("ok")]
    return 1 if failed else 0


# --- bench workloads (d): diskimg bench vs qemu-img bench --------------------------------

BENCH_SIZE = 512 * MIB
# "Random" 4 KiB requests: a step of a prime number of blocks, so request i
# lands at (i * step) % size, visiting the blocks of the image in a
# scrambled order (qemu-img bench has no random mode; both programs get the
# same argument and so the same offsets).
RANDOM_STEP = 7919 * 4096
BENCH_IMAGES = {
    # name: (format, qemu-img create/convert options)
    "raw": ("raw", []),
    "qcow2": ("qcow2", []),
    "qcow2-prealloc": ("qcow2", ["-o", "preallocation=metadata"]),
}


def build_random_raw(path, size):
    with open(path + ".tmp", "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    os.rename(path + ".tmp", path)


def bench_workloads(work, tag, scale, only, ready_file):
    """4 KiB sequential and random reads and writes at depth 1 and 64 on raw,
    qcow2 and qcow2 with preallocation=metadata (page cache, writeback), and
    4 KiB random reads and writes at depth 1 and 64 on raw and qcow2 with
    O_DIRECT (`-t none`). Reads go to images full of data; every write run
    gets a fresh image (made untimed before the run). The figure is the
    `Run completed in` time each program reports."""
    names = []
    for op in ("read", "write"):
        for pat in ("seq", "rand"):
            for depth in (1, 64):
                for img in BENCH_IMAGES:
                    names.append((f"d-{op}-{pat}-{depth}-{img}", op, pat, depth, img, None))
    # O_DIRECT (`-t none`): 4 KiB random requests, raw and qcow2.
    for op in ("read", "write"):
        for depth in (1, 64):
            for img in ("raw", "qcow2"):
                names.append((f"d-{op}-rand-{depth}-{img}-none", op, "rand", depth, img, "none"))
    wanted = [n for n in names if "d" in only or n[0] in only]
    if not wanted:
        return []
    size = BENCH_SIZE // scale
    count = str(50000 // scale)
    data = None
    if any(n[1] == "read" for n in wanted):
        data = ready_file(os.path.join(work, f"bench-data.{tag}.raw"), lambda p: build_random_raw(p, size))
    loads = []
    for name, op, pat, depth, img, cache in wanted:
        fmt, opts = BENCH_IMAGES[img]
        step = "4096" if pat == "seq" else str(RANDOM_STEP)
        args = ["bench", "-f", fmt, "-c", count, "-d", str(depth), "-s", "4096", "-S", step]
        if cache:
            args += ["-t", cache]
        if op == "read":
            if fmt == "raw":
                path = data
            else:
                path = ready_file(os.path.join(work, f"bench-read-{img}.{tag}.qcow2"),
                                  lambda p, opts=opts: run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
                                                           + opts + [data, p]))
            loads.append(Workload(name, "", args + [path], run_time=True))
        else:
            def prepare(who, fresh=True, fmt=fmt, opts=opts, img=img):
                path = os.path.join(work, f"bench-write-{img}.{who}.{fmt}")
                if fresh:
                    if os.path.exists(path):
                        os.remove(path)
                    run(["qemu-img", "create", "-q", "-f", fmt] + opts + [path, str(size)])
                return path

            def verify(q_img, d_img, fmt=fmt):
                r = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, q_img, d_img],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    return "diskimg's image DIFFERS from qemu-img's: " + r.stdout.decode(errors="replace")[:100]
                if fmt == "qcow2":
                    r = subprocess.run(["qemu-img", "check", d_img], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    if r.returncode != 0:
                        return "qemu-img check FAILS on diskimg's image: " + r.stdout.decode(errors="replace")[:100]
                return None

            loads.append(Workload(name, "", args + ["-w", "--pattern", "90", "{img}"], prepare=prepare,
                                  run_time=True, verify=verify))
    return loads


args_dir = None

if __name__ == "__main__":
    sys.exit(main())
