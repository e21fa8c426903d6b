#!/usr/bin/env python3
"""Parses the in-guest benchmark's serial log and writes its results.

usage: parse.py MATRIX SERIAL_LOG [--doc PERFORMANCE.md] [--meta KEY=VALUE ...]
(meta keys shown in the text: date cpu cpus qemu kernel load_before load_after
secs ramp rounds; boot_log= boot.sh's progress output and load_file= `secs
load` samples give the host's load during the turns)

The guests ran together, and dom0 (serve.sh) handed out the jobs one at a
time, alternating the example unikernel (`xenblk`) and the Linux anchor
(`linux`) job by job. Each turn is one line of dom0's:

    LAB bench-turn round=<r> guest=<name> status=<ok|...> secs=<s> seq=<n>
        vdev=<n> backend=<phy|qdisk> job=<name> iops=<n> mbps=<n> ...

For every round, disk and job the ratio of the two guests' IOPS (the two runs
are seconds apart); per disk and job the median of those ratios over the
rounds (of an even count, the lower middle: the cautious one) with the
lowest and highest, the median IOPS (and MB/s) of each guest, and the machine
lines

    inguest job=<4k-qd1|4k-qd32|1m-seq> backend=<phy|qdisk> xenblk/linux=<ratio>

The guests' console logs (through tests/lab/check.py's parser) give what each
negotiated. With --doc it replaces the part of the file between
`<!-- inguest-bench:begin -->` and `<!-- inguest-bench:end -->` with the
results, unless the run had problems. Exit 1 when a guest did not finish
cleanly or a pair is missing.
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


OURS, ANCHOR = "xenblk", "linux"
TURN = re.compile(r"^LAB bench-turn (.*)$")


def turns(path):
    """The `LAB bench-turn` lines of the serial log, as field dicts."""
    out = []
    with open(path, "rb") as f:
        for raw in f.read().decode("latin-1").split("\n"):
            m = TURN.match(raw.rstrip("\r"))
            if m:
                out.append(fields("x " + m.group(1)))
    return out


def guest_info(matrix, configs):
    """{guest: {"status", "info": [lines], "closing": (passed, failed)}}"""
    out = {}
    for name, _mode, _specs in matrix:
        attempts = configs.get(name, [])
        g = {"status": "missing", "info": [], "closing": None}
        out[name] = g
        if not attempts:
            continue
        last = attempts[-1]
        g["status"] = last["status"] or "unfinished"
        lines, _src = guest_lines(last)
        for ln in lines:
            ln = re.sub(r"^\(d\d+\) ", "", ln)
            if ln.startswith(("xenblk-unikernel: bench ", "linux-disk ", "linux-guest ",
                              "linux-blkfront-param ")) or "FAIL" in ln:
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
            if ln.startswith(("LAB bench ", "LAB bench:", "LAB bench-restart ", "LAB dom0-ready")):
                keep.append(ln)
    return keep


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def low_median(xs):
    """The median; of an even count the lower middle (the cautious one)."""
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if xs else None


def turn_loads(boot_log, load_file):
    """{seq: mean host load during that turn}, from boot.sh's progress lines
    (`[lab <s>s] bench-turn ... seq=<n>` at the turn's end, `secs=` its
    length) and the `secs load` samples."""
    out = {}
    if not boot_log or not load_file or not os.path.exists(boot_log) \
            or not os.path.exists(load_file):
        return out
    samples = []
    with open(load_file) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) >= 2 and num(parts[0]) is not None and num(parts[1]) is not None:
                samples.append((num(parts[0]), num(parts[1])))
    with open(boot_log, errors="replace") as f:
        for ln in f:
            m = re.match(r"^\[lab +(\d+)s\] bench-turn (.*)$", ln.rstrip("\n"))
            if not m:
                continue
            t = fields("x " + m.group(2))
            end, length = int(m.group(1)), num(t.get("secs")) or 0
            vals = [v for (ts, v) in samples if end - length - 1 <= ts <= end + 1]
            if t.get("seq") and vals:
                out[t["seq"]] = sum(vals) / len(vals)
    return out


def render(guests, tlist, lab, meta, loads):
    """(markdown, machine lines, problems)."""
    problems = []
    for name, g in guests.items():
        if g["status"] != "ok":
            problems.append(f"guest {name}: status {g['status']}")
        if g["closing"] and g["closing"][1]:
            problems.append(f"guest {name}: {g['closing'][1]} check(s) failed")
    # (round, backend, job) -> {guest: turn}
    pairs = {}
    # Turns whose guest died and was booted again: run again, said below.
    redone = {fields("x " + ln[len("LAB bench-restart "):]).get("seq")
              for ln in lab if ln.startswith("LAB bench-restart ")}
    for t in tlist:
        if t.get("round") == "0":
            continue  # the warm-up
        if t.get("status") == "died" and t.get("seq") in redone:
            continue
        if t.get("status") != "ok":
            problems.append(f"turn seq={t.get('seq')} of {t.get('guest')} round {t.get('round')}"
                            f" ({t.get('backend', '?')} {t.get('job', '?')}): {t.get('status')}")
            continue
        pairs.setdefault((t.get("round"), t.get("backend"), t.get("job")), {})[t.get("guest")] = t
    rounds = sorted({r for (r, _b, _j) in pairs}, key=lambda r: int(r) if r.isdigit() else 0)

    md = []
    md.append(f"Measured {meta.get('date', '?')} on {meta.get('cpu', '?')}, "
              f"{meta.get('cpus', '?')} host CPUs, host load average {meta.get('load_before', '?')} "
              f"before and {meta.get('load_after', '?')} after the run"
              + (f", {sum(loads.values()) / len(loads):.2f} on average during the turns"
                 if loads else "") + ".")
    md.append("")
    md.append(f"Stack: `{meta.get('qemu', '?')}` (TCG, `-cpu qemu64,+svm,+npt`, 2 vCPUs), "
              + "; ".join(ln.split("(dom0 uptime")[0].replace("LAB dom0-ready ", "Xen/tools: ")
                          .strip() for ln in lab if ln.startswith("LAB dom0-ready"))
              + f"; dom0 kernel {meta.get('kernel', '?')}; each guest 1 vCPU; "
              f"{meta.get('rounds', '?')} rounds, {meta.get('secs', '?')} s per job after a "
              f"{meta.get('ramp', '?')} s ramp.")
    md.append("")
    md.append("**These are nested-emulation figures**: Xen and every guest run on QEMU's TCG "
              "binary translator, on a shared 2-core machine. Absolute IOPS and MB/s say nothing "
              "about hardware; only ratios of runs made next to each other in the same boot, "
              "against the same backends, mean something. Both guests were up for the whole "
              "run; dom0 handed out one job at a time, alternating the guests job by job (round "
              "1 unikernel first, round 2 Linux first, ...), so the two runs of a pair are "
              "seconds apart and the other guest sat idle, blocked, meanwhile.")
    md.append("")
    md.append(f"xenblk/linux per round (IOPS over IOPS of the pair), the median over the rounds "
              f"(of an even count the lower middle), and each guest's median:")
    md.append("")
    md.append("| backend | job | " + " | ".join(f"r{r}" for r in rounds)
              + " | median | min-max | xenblk | linux | target |")
    md.append("|---|---|" + "---|" * (len(rounds) + 5))
    machine = []
    for be in BACKENDS:
        for job in JOBS:
            qs, ours, theirs = [], [], []
            row = [be, job]
            for r in rounds:
                p = pairs.get((r, be, job), {})
                a, b = p.get(OURS), p.get(ANCHOR)
                q = None
                if a and b and num(b.get("iops")):
                    q = num(a.get("iops")) / num(b.get("iops"))
                if a:
                    ours.append(a)
                if b:
                    theirs.append(b)
                if q is None:
                    problems.append(f"round {r} {be} {job}: no pair")
                    row.append("-")
                else:
                    qs.append(q)
                    row.append(f"{q:.2f}")
            med = low_median(qs)
            t = TARGETS.get(job)
            row.append("-" if med is None else f"**{med:.2f}**")
            row.append("-" if not qs else f"{min(qs):.2f}-{max(qs):.2f}")
            for side in (ours, theirs):
                i = low_median([num(x.get("iops")) for x in side if num(x.get("iops")) is not None])
                mb = low_median([num(x.get("mbps")) for x in side if num(x.get("mbps")) is not None])
                row.append("-" if i is None else
                           (f"{i:.0f} IOPS" + (f", {mb:.1f} MB/s" if job == "1m-seq" and mb else "")))
            row.append("-" if t is None or med is None else
                       f">= {t}: {'met' if med >= t else 'MISSED'}")
            md.append("| " + " | ".join(row) + " |")
            machine.append(f"inguest job={job} backend={be} xenblk/linux="
                           + ("nan" if med is None else f"{med:.3f}"))
    md.append("")
    if loads:
        per_round = {}
        for t in tlist:
            if t.get("seq") in loads:
                per_round.setdefault(t.get("round"), []).append(loads[t["seq"]])
        md.append("Host load average (1 min) during the turns, per round: "
                  + ", ".join(f"r{r} {sum(v) / len(v):.2f}" for r, v in
                              sorted(per_round.items(), key=lambda kv: int(kv[0])))
                  + ".")
        md.append("")
    restarts = [ln[len("LAB bench-restart "):] for ln in lab if ln.startswith("LAB bench-restart ")]
    if restarts:
        md.append(f"Guests that died and were booted again ({len(restarts)}; the interrupted "
                  "turn was run again after a warm-up turn; a PVH guest under this nested QEMU "
                  "dies now and then with a triple fault at a Xen address, docs/LAB.md): "
                  + "; ".join(f"`{r}`" for r in restarts) + ".")
        md.append("")
    md.append("What each guest negotiated and ran with (from its own lines):")
    md.append("")
    md.append("```text")
    for ln in lab:
        if ln.startswith("LAB bench"):
            md.append(ln)
    for n, g in guests.items():
        for ln in g["info"]:
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
    guests = guest_info(matrix, parse_log(pos[1]))
    tlist = turns(pos[1])
    loads = turn_loads(meta.get("boot_log"), meta.get("load_file"))
    md, machine, problems = render(guests, tlist, lab_lines(pos[1]), meta, loads)
    print(md)
    if doc and not problems:
        update_doc(doc, md)
        print(f"(results written to {doc})", file=sys.stderr)
    elif doc:
        print(f"(results NOT written to {doc}: the run had problems)", file=sys.stderr)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    # The bench closes with its machine lines.
    print("\n".join(machine))
    return 0 if machine and not problems else 1

if __name__ == "__main__":
    sys.exit(main())
