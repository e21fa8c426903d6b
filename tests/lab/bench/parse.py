#!/usr/bin/env python3
"""Parses the in-guest benchmark's serial log and writes its results.

usage: parse.py MATRIX SERIAL_LOG [--doc PERFORMANCE.md] [--meta KEY=VALUE ...]

For every guest of MATRIX (its last attempt in the log, through the lab's own
log parser, tests/lab/check.py) it collects the per-job lines of the example
unikernel (`xenblk-bench ...`) and of the Linux anchor guest
(`linux-bench ...`), prints a table and the machine lines

    inguest job=<4k-qd1|4k-qd32|1m-seq> backend=<phy|qdisk> xenblk/linux=<ratio>

(xenblk = the guest named `xenblk`, interrupt-driven like Linux; the ratio is
of requests per second, which for one block size is also the ratio of MB/s).
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


def render(guests, lab, meta):
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
    anchor = "linux" if "linux" in guests else None
    ours = "xenblk" if "xenblk" in guests else None
    md = []
    md.append(f"Measured {meta.get('date', '?')} on {meta.get('cpu', '?')}, "
              f"{meta.get('cpus', '?')} host CPUs, load average {meta.get('load_before', '?')} "
              f"before and {meta.get('load_after', '?')} after the run.")
    md.append("")
    md.append(f"Stack: `{meta.get('qemu', '?')}` (TCG, `-cpu qemu64,+svm,+npt`, 2 vCPUs), "
              + "; ".join(ln.split("(dom0 uptime")[0].replace("LAB dom0-ready ", "Xen/tools: ")
                          .strip() for ln in lab if ln.startswith("LAB dom0-ready"))
              + f"; dom0 kernel {meta.get('kernel', '?')}; each guest 1 vCPU; "
              f"{meta.get('secs', '?')} s per job after a {meta.get('ramp', '?')} s ramp.")
    md.append("")
    md.append("**These are nested-emulation figures**: Xen and both guests run on QEMU's TCG "
              "binary translator, on a shared 2-core machine. Absolute IOPS and MB/s say nothing "
              "about hardware; only the xenblk/linux ratio, measured in the same boot against "
              "the same backends, is meaningful, and even it moves with the machine's load.")
    md.append("")
    md.append("| backend | job | " + " | ".join(f"{n} IOPS | {n} MB/s" for n in names)
              + (" | xenblk/linux | target |" if ours and anchor else " |"))
    md.append("|---|---|" + "---|---|" * len(names) + ("---|---|" if ours and anchor else ""))
    machine = []
    for be in BACKENDS:
        for job in JOBS:
            row = [be, job]
            for n in names:
                r = guests[n]["results"].get((be, job))
                if r is None:
                    problems.append(f"guest {n}: no result for {be} {job}")
                    row += ["-", "-"]
                else:
                    row += [r.get("iops", "-"), r.get("mbps", "-")]
            if ours and anchor:
                a = guests[ours]["results"].get((be, job), {}).get("iops")
                b = guests[anchor]["results"].get((be, job), {}).get("iops")
                q = ratio(a, b)
                row.append("-" if q is None else f"{q:.3f}")
                t = TARGETS.get(job)
                if t is None or q is None:
                    row.append("-")
                else:
                    row.append(f">= {t}: {'met' if q >= t else 'MISSED'}")
                machine.append(f"inguest job={job} backend={be} xenblk/linux="
                               + ("nan" if q is None else f"{q:.3f}"))
                if "xenblk-spin" in guests:
                    s = guests["xenblk-spin"]["results"].get((be, job), {}).get("iops")
                    qs = ratio(s, b)
                    if qs is not None:
                        machine.append(f"inguest-extra job={job} backend={be} "
                                       f"xenblk-spin/linux={qs:.3f}")
            md.append("| " + " | ".join(row) + " |")
    md.append("")
    md.append("What each guest negotiated and ran with (from its own lines):")
    md.append("")
    md.append("```text")
    for ln in lab:
        if ln.startswith("LAB bench"):
            md.append(ln)
    for n in names:
        for ln in guests[n]["info"]:
            if ln.startswith(("xenblk-unikernel: bench ", "linux-disk ", "linux-guest ",
                              "linux-blkfront-param ")):
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
    md, machine, problems = render(guests, lab_lines(pos[1]), meta)
    print(md)
    if doc:
        update_doc(doc, md)
        print(f"(results written to {doc})", file=sys.stderr)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    # The bench closes with its machine lines.
    print("\n".join(machine))
    complete = all(not p.startswith("guest") or "retried" in p for p in problems)
    return 0 if machine and complete else 1


if __name__ == "__main__":
    sys.exit(main())
