#!/usr/bin/env python3
"""Parses the in-guest benchmark's serial log and writes its results.

usage: parse.py MATRIX SERIAL_LOG [--doc PERFORMANCE.md] [--meta KEY=VALUE ...]
(meta keys shown in the text: date cpu cpus qemu kernel load_before load_after
secs ramp; boot_log= boot.sh's progress output and load_file= `secs load`
samples give each guest's mean host load)

For every guest of MATRIX (its last attempt in the log, through the lab's own
log parser, tests/lab/check.py) it collects the per-job lines of the example
unikernel (`xenblk-bench ...`) and of the Linux anchor guest
(`linux-bench ...`), prints a table and the machine lines

    inguest job=<4k-qd1|4k-qd32|1m-seq> backend=<phy|qdisk> xenblk/linux=<ratio>

Guests `xenblk`, `xenblk-N` are the unikernel's rounds, `linux`, `linux-N` the
Linux PV guest's; the ratio of each round is IOPS over IOPS (for one block
size also the MB/s ratio) and the line gives the median over the rounds (of
an even count, the lower middle). Other `linux*` guests (linux-pvh) give
`inguest-extra ... xenblk/<name>=<ratio>` lines against the unikernel's
median.
With --doc it replaces the part of the file between
`<!-- inguest-bench:begin -->` and `<!-- inguest-bench:end -->` with the
results. Exit 1 when a guest did not finish or a job line is missing.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from check import fields, guest_lines, parse_log, parse_matrix  # noqa: E402

JOBS = ["4k-qd1", "4k-qd32", "1m-seq"]
BACKENDS = ["phy", "qdisk"]
TARGETS = {"4k-qd32": 1.5, "1m-seq": 1.0}  # issue 6: xenblk/linux at least
BEGIN_MARK = "<!-- inguest-bench:begin -->"
END_MARK = "<!-- inguest-bench:end -->"


def collect(matrix, configs):
    """{guest: {"status", "attempts", "results": {(backend, job): fields},
    "info": [lines]}}"""
    out = {}
    for name, _mode, _specs in matrix:
        attempts = configs.get(name, [])
        g = {"status": "missing", "attempts": len(attempts), "results": {}, "info": [],
             "closing": None}
        out[name] = g
        if not attempts:
            continue
        last = attempts[-1]
        g["status"] = last["status"] or "unfinished"
        lines, _src = guest_lines(last)
        for ln in lines:
            ln = re.sub(r"^\(d\d+\) ", "", ln)
            if ln.startswith(("xenblk-bench ", "linux-bench ")) and "job=" in ln:
                f = fields(ln)
                if "iops" in f and "backend" in f:
                    g["results"][(f["backend"], f["job"])] = f
                else:
                    g["info"].append(ln)
            elif ln.startswith(("xenblk-unikernel: bench ", "linux-disk ", "linux-guest ",
                                "linux-blkfront-param ", "xenblk-check ")) or "FAIL" in ln:
                g["info"].append(ln)
            m = re.match(r"^xenblk: (\d+) passed, (\d+) failed", ln)
            if m:
                g["closing"] = (int(m.group(1)), int(m.group(2)))
    return out


def lab_lines(path):
    """The `LAB bench ...` and `LAB dom0-ready ...` lines of the log."""
    keep = []
    with open(path, "rb") as f:
        for raw in f.read().decode("latin-1").split("\n"):
            ln = raw.rstrip("\r")
            if ln.startswith(("LAB bench", "LAB dom0-ready")):
                keep.append(ln)
    return keep


def ratio(a, b):
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return x / y if y > 0 else None


def round_of(name, kind):
    """The round of guest `name` of `kind` (xenblk, linux): `kind` is 1,
    `kind-N` is N; None for any other name (e.g. linux-pvh)."""
    m = re.fullmatch(kind + r"(?:-(\d+))?", name)
    return int(m.group(1) or 1) if m else None


def low_median(xs):
    """The median; of an even count the lower middle (the cautious one)."""
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if xs else None


def guest_windows(boot_log):
    """{guest: (start s, end s)} from boot.sh's progress lines (last attempt)."""
    win = {}
    if not boot_log or not os.path.exists(boot_log):
        return win
    start = {}
    with open(boot_log, errors="replace") as f:
        for ln in f:
            m = re.match(r"^\[lab +(\d+)s\] (.*)$", ln.rstrip("\n"))
            if not m:
                continue
            t, msg = int(m.group(1)), m.group(2)
            m2 = re.match(r"images ready for (\S+) ", msg + " ")
            if m2:
                start[m2.group(1)] = t
            m2 = re.match(r"RESULT name=(\S+) ", msg)
            if m2 and m2.group(1) in start:
                win[m2.group(1)] = (start[m2.group(1)], t)
    return win


def mean_load(load_file, window):
    """Mean 1-minute host load average over `window` from `secs load` lines."""
    if not load_file or not window or not os.path.exists(load_file):
        return None
    vals = []
    with open(load_file) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) >= 2:
                try:
                    t, v = int(parts[0]), float(parts[1])
                except ValueError:
                    continue
                if window[0] <= t <= window[1]:
                    vals.append(v)
    return sum(vals) / len(vals) if vals else None


def render(guests, lab, meta, loads):
    """(markdown, machine lines, problems)."""
    problems = []
    for name, g in guests.items():
        if g["status"] != "ok":
            problems.append(f"guest {name}: status {g['status']}")
        if g["attempts"] > 1:
            problems.append(f"guest {name}: retried ({g['attempts']} attempts; the last counts)")
        if g["closing"] and g["closing"][1]:
            problems.append(f"guest {name}: {g['closing'][1]} check(s) failed")
    names = list(guests)
    ours = {round_of(n, "xenblk"): n for n in names if round_of(n, "xenblk")}
    anchors = {round_of(n, "linux"): n for n in names if round_of(n, "linux")}
    rounds = sorted(set(ours) & set(anchors))
    extra_anchors = [n for n in names if n.startswith("linux") and round_of(n, "linux") is None]

    def iops(n, be, job):
        return guests[n]["results"].get((be, job), {}).get("iops")

    md = []
    md.append(f"Measured {meta.get('date', '?')} on {meta.get('cpu', '?')}, "
              f"{meta.get('cpus', '?')} host CPUs, host load average {meta.get('load_before', '?')} "
              f"before and {meta.get('load_after', '?')} after the run.")
    md.append("")
    md.append(f"Stack: `{meta.get('qemu', '?')}` (TCG, `-cpu qemu64,+svm,+npt`, 2 vCPUs), "
              + "; ".join(ln.split("(dom0 uptime")[0].replace("LAB dom0-ready ", "Xen/tools: ")
                          .strip() for ln in lab if ln.startswith("LAB dom0-ready"))
              + f"; dom0 kernel {meta.get('kernel', '?')}; each guest 1 vCPU; "
              f"{meta.get('secs', '?')} s per job after a {meta.get('ramp', '?')} s ramp.")
    md.append("")
    md.append("**These are nested-emulation figures**: Xen and every guest run on QEMU's TCG "
              "binary translator, on a shared 2-core machine. Absolute IOPS and MB/s say nothing "
              "about hardware; only ratios of runs made next to each other in the same boot, "
              "against the same backends, mean something, and even they move with the host's "
              "load (the last row gives it per guest).")
    md.append("")
    md.append("IOPS (MB/s) per guest, in the order they ran:")
    md.append("")
    md.append("| backend | job | " + " | ".join(names) + " |")
    md.append("|---|---|" + "---|" * len(names))
    for be in BACKENDS:
        for job in JOBS:
            row = [be, job]
            for n in names:
                r = guests[n]["results"].get((be, job))
                if r is None:
                    if guests[n]["status"] == "ok":
                        problems.append(f"guest {n}: no result for {be} {job}")
                    row.append("-")
                else:
                    row.append(f"{r.get('iops', '-')} ({r.get('mbps', '-')})")
            md.append("| " + " | ".join(row) + " |")
    row = ["", "host load"]
    for n in names:
        v = loads.get(n)
        st = guests[n]["status"]
        row.append((f"{v:.1f}" if v is not None else "?")
                   + ("" if st == "ok" else f" ({st})"))
    md.append("| " + " | ".join(row) + " |")
    md.append("")
    machine = []
    if rounds:
        md.append("xenblk/linux, IOPS over IOPS of the unikernel and the Linux PV guest of the "
                  "same round (for one block size also the MB/s ratio); the `inguest` line "
                  "takes the median over the rounds (of two, the lower):")
        md.append("")
        md.append("| backend | job | " + " | ".join(f"round {k}" for k in rounds)
                  + " | median | target | "
                  + " | ".join(f"xenblk/{n}" for n in extra_anchors) + (" |" if extra_anchors else "")
                  .rstrip() )
        md[-1] = md[-1].rstrip(" |") + " |"
        md.append("|---|---|" + "---|" * (len(rounds) + 2 + len(extra_anchors)))
        for be in BACKENDS:
            for job in JOBS:
                qs = [ratio(iops(ours[k], be, job), iops(anchors[k], be, job)) for k in rounds]
                good = [q for q in qs if q is not None]
                med = low_median(good)
                t = TARGETS.get(job)
                verdict = "-" if t is None or med is None else \
                    f">= {t}: {'met' if med >= t else 'MISSED'}"
                row = [be, job] + ["-" if q is None else f"{q:.2f}" for q in qs]
                row += ["-" if med is None else f"{med:.2f}", verdict]
                ours_med = low_median([float(v) for v in (iops(ours[k], be, job) for k in rounds)
                                       if v is not None])
                for n in extra_anchors:
                    q = ratio(ours_med, iops(n, be, job))
                    row.append("-" if q is None else f"{q:.2f}")
                    if q is not None:
                        machine.append(f"inguest-extra job={job} backend={be} xenblk/{n}={q:.3f}")
                md.append("| " + " | ".join(row) + " |")
                machine.insert(sum(1 for m in machine if m.startswith("inguest ")),
                               f"inguest job={job} backend={be} xenblk/linux="
                               + ("nan" if med is None else f"{med:.3f}"))
        md.append("")
    else:
        problems.append("no round with both a xenblk and a linux result")
    md.append("What each guest negotiated and ran with (from its own lines):")
    md.append("")
    md.append("```text")
    for ln in lab:
        if ln.startswith("LAB bench"):
            md.append(ln)
    shown = set()
    for n in names:
        for ln in guests[n]["info"]:
            if ln.startswith(("xenblk-unikernel: bench ", "linux-disk ", "linux-guest ",
                              "linux-blkfront-param ")):
                key = (n.split("-")[0] if not n.endswith("-pvh") else n, ln)
                if key not in shown:
                    shown.add(key)
                    md.append(f"[{n}] {ln}")
    md.append("```")
    md.append("")
    md.append("```text")
    md += machine
    md.append("```")
    if problems:
        md.append("")
        md.append("Problems in this run: " + "; ".join(problems) + ".")
    return "\n".join(md), machine, problems


def update_doc(path, body):
    with open(path) as f:
        text = f.read()
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        text = head + BEGIN_MARK + "\n" + body + "\n" + END_MARK + tail
    else:
        text = text.rstrip("\n") + "\n\n" + BEGIN_MARK + "\n" + body + "\n" + END_MARK + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    argv = sys.argv[1:]
    doc = None
    meta = {}
    pos = []
    i = 0
    while i < len(argv):
        if argv[i] == "--doc" and i + 1 < len(argv):
            doc = argv[i + 1]
            i += 2
        elif argv[i] == "--meta" and i + 1 < len(argv) and "=" in argv[i + 1]:
            k, v = argv[i + 1].split("=", 1)
            meta[k] = v
            i += 2
        else:
            pos.append(argv[i])
            i += 1
    if len(pos) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    matrix = parse_matrix(pos[0])
    guests = collect(matrix, parse_log(pos[1]))
    win = guest_windows(meta.get("boot_log"))
    loads = {n: mean_load(meta.get("load_file"), win.get(n)) for n in guests}
    md, machine, problems = render(guests, lab_lines(pos[1]), meta, loads)
    print(md)
    if doc:
        update_doc(doc, md)
        print(f"(results written to {doc})", file=sys.stderr)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    # The bench closes with its machine lines.
    print("\n".join(machine))
    # Only the two guests of the `inguest` lines decide; other guests (a
    # second anchor, a variant) are reported but may fail.
    complete = not any(re.match(r"guest (xenblk|linux)(-\d+)?:", p) and "retried" not in p
                       or p.startswith("no round") for p in problems)
    return 0 if machine and complete else 1


if __name__ == "__main__":
    sys.exit(main())
