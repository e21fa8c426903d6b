#!/usr/bin/env python3
"""Checks a lab serial log against what the toolstack really wrote.

usage: check.py MATRIX SERIAL_LOG [--show]

For every configuration of MATRIX (its last attempt in the log) it compares
each `xenblk-disk` line of the guest (docs/LINES.md) field by field with the
xenstore-ls dump that dom0 took before destroying the guest and with
xenstored's access log of the guest's directories (the driver removes its
ring keys when it closes), checks the geometry (sectors-unit, sector size,
capacity) against the backend's rule (docs/SECTORS.md), the image's size and
dom0's blockdev view, the closing `xenblk: N passed, M failed` line, the
misaligned refusals and the dom0-side cksums of every `xenblk-verify` region,
and that the dump matches the disk specs of MATRIX (docs/LAB.md).
One line per check, then `lab: N passed, M failed`; exit 1 on any failure.
--show also prints each guest's console lines (the unikernel's report).
"""
import re
import sys


def _crc_table():
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def posix_cksum(data: bytes) -> int:
    """The CRC that POSIX `cksum` prints (CRC-32/CKSUM over data + length)."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ b]
    n = len(data)
    while n:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ (n & 0xFF)]
        n >>= 8
    return ~crc & 0xFFFFFFFF


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        return ok


def parse_matrix(path):
    """[(name, mode, [disk spec dict])] from a matrix file."""
    out = []
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, mode, disks = line.split(None, 2)
            disks = re.sub(r"^memory=\d+\s+", "", disks)  # the guest's memory (boot.sh)
            disks = re.sub(r"^action=[a-z0-9:@,-]+\s+", "", disks)  # job.sh's xl commands
            specs = []
            for d in disks.split(";"):
                spec = {"flags": set()}
                for item in d.split(","):
                    item = item.strip()
                    if "=" in item:
                        k, v = item.split("=", 1)
                        spec[k.strip()] = v.strip()
                    elif item:
                        spec["flags"].add(item)
                specs.append(spec)
            out.append((name, mode, specs))
    return out


def vdev_number(name):
    """The virtual-device number libxl (and QEMU's xen-bus) gives xvd<L>:
    202<<8 | n<<4 for xvda..xvdp, 1<<28 | n<<8 from xvdq on."""
    m = re.fullmatch(r"xvd([a-z]+)", name)
    if not m:
        return None
    n = 0
    for ch in m.group(1):
        n = n * 26 + ord(ch) - 96
    n -= 1
    return str((202 << 8) | (n << 4) if n < 16 else (1 << 28) | (n << 8))


def target_of(spec):
    """(image name, MiB, device kind or None) of a spec's target=@X[:MIB][+KIND]@."""
    m = re.fullmatch(r"@([a-z0-9]+)(?::(\d+))?(?:\+(loop|loop4k|null4k))?@", spec.get("target", ""))
    if not m:
        return None, None, None
    return m.group(1), int(m.group(2) or 64), m.group(3)


BEGIN = re.compile(r"^LAB BEGIN (\S+) (\S+)(?: (.*))?$")
END = re.compile(r"^LAB END (\S+) (\S+)(?: lines=(\d+) cksum=(\d+))?")
RESULT = re.compile(r"^LAB RESULT name=(\S+) attempt=(\d+) status=(\S+)")


def parse_log(path):
    """{name: [attempt dict]}: sections and result of each config attempt."""
    with open(path, "rb") as f:
        text = f.read().decode("latin-1")
    configs = {}
    cur = None
    sec = None
    pending = None
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if pending is not None:
            line, pending = pending + line, None
        if sec is not None and sec[0] != "xl-dmesg":
            # Xen's own console output can land in the middle of a line of
            # dom0's (seen: "...state 6(XEN) uart interrupt taking more than
            # 4ms, switched to polling", the rest of dom0's line, its CR LF,
            # on the next line): cut it out and join the two halves.
            m = re.search(r"\((XEN|d\d+)\) ", line)
            if m and m.start() > 0:
                pending = line[:m.start()]
                continue
        m = BEGIN.match(line)
        if m and m.group(1) == "config":
            cur = {"name": m.group(2), "head": m.group(3) or "", "sections": {},
                   "integrity": [], "status": None, "attempt": None}
            configs.setdefault(m.group(2), []).append(cur)
            sec = None
            continue
        if cur is None:
            continue
        if sec is not None:
            m = END.match(line)
            if m and m.group(1) == sec[0] and m.group(2) == cur["name"]:
                body = sec[1]
                if m.group(3) is not None and sec[0] != "xl-dmesg":
                    data = "".join(ln + "\n" for ln in body).encode("latin-1")
                    cur["integrity"].append(
                        (sec[0], len(body) == int(m.group(3))
                         and posix_cksum(data) == int(m.group(4))))
                cur["sections"][sec[0]] = body
                sec = None
            elif sec[0] != "xl-dmesg" and re.match(r"^\((XEN|d\d+)\) ", line):
                pass  # Xen's and the guests' (port 0xe9) lines, interleaved live
            else:
                sec[1].append(line)
            continue
        m = BEGIN.match(line)
        if m:
            sec = (m.group(1), [])
            continue
        m = RESULT.match(line)
        if m:
            cur["status"] = m.group(3)
            cur["attempt"] = int(m.group(2))
            continue
        if line.startswith("LAB END config "):
            cur = None
    return configs


def parse_xenstore(lines):
    xs = {}
    for line in lines:
        m = re.match(r'^(/\S+) = "(.*)"', line)
        if m:
            xs[m.group(1)] = m.group(2)
    return xs


XSLOG = re.compile(r"^\[\S+\]\s+(\S+)\s+(write|rm)\s+(/\S+)(?: (.*))?$")


def parse_xslog(lines):
    """oxenstored's access-log lines of a guest's directories (job.sh):
    {path: [(connection, op, value)]} in order. A connection `D<n>` is
    domain n's ring (`D<n>.<t>` in transaction t), `A<n>` a dom0 socket."""
    log = {}
    for line in lines:
        m = XSLOG.match(line)
        if m:
            log.setdefault(m.group(3), []).append((m.group(1), m.group(2), (m.group(4) or "").rstrip()))
    return log


def fields(line):
    out = {}
    for tok in line.split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def guest_lines(cfg):
    lines = cfg["sections"].get("console")
    src = "console log"
    if not lines:  # fall back to the 0xe9 lines in `xl dmesg`
        src = "xl dmesg (0xe9)"
        lines = [re.sub(r"^\(d\d+\) ", "", ln) for ln in cfg["sections"].get("xl-dmesg", [])
                 if re.match(r"^\(d\d+\) ", ln)]
    return [ln for ln in lines], src


def check_features(c, p, xs, be, fe, listed):
    """features= is what is in use (README, "The `xenblk-disk` line"),
    checked against the backend's offers and the frontend's own keys."""
    got = got_features(listed)
    offered = lambda key: xs.get(f"{be}/{key}") == "1"  # noqa: E731
    known = {"flush-cache", "barrier", "barrier-offered", "discard", "discard-secure",
             "persistent", "indirect", "ring-order", "queues"}
    for tok in sorted(set(got) - known):
        c.check(False, f"{p} feature {tok}: not a documented features= token")
    fc, bar = offered("feature-flush-cache"), offered("feature-barrier")
    c.check(("flush-cache" in got) == fc and ("barrier" in got) == (bar and not fc),
            f"{p} flush method: line {'flush-cache' if 'flush-cache' in got else 'barrier' if 'barrier' in got else 'none'}, "
            f"backend offers feature-flush-cache={int(fc)} feature-barrier={int(bar)}")
    c.check(bar == (("barrier" in got) != ("barrier-offered" in got)),
            f"{p} barrier {'offered' if bar else 'not offered'}: line says "
            f"{[t for t in ('barrier', 'barrier-offered') if t in got] or 'nothing'}")
    c.check(("discard" in got) == offered("feature-discard"),
            f"{p} discard: line {show(got, 'discard')}, backend feature-discard="
            f"{xs.get(f'{be}/feature-discard', 'absent')}")
    c.check(("discard-secure" in got) == (offered("feature-discard") and offered("discard-secure")),
            f"{p} discard-secure: line {show(got, 'discard-secure')}, backend discard-secure="
            f"{xs.get(f'{be}/discard-secure', 'absent')}")
    fe_p = xs.get(f"{fe}/feature-persistent") == "1"
    c.check(("persistent" in got) == (offered("feature-persistent") and fe_p),
            f"{p} persistent: line {show(got, 'persistent')}, backend "
            f"{xs.get(f'{be}/feature-persistent', 'absent')}, frontend {int(fe_p)}")
    offer = xs.get(f"{be}/feature-max-indirect-segments")
    n = got.get("indirect")
    ok = (n is None and "indirect" not in got) if offer is None else (
        n is not None and n.isdigit() and 0 < int(n) <= int(offer))
    c.check(ok, f"{p} indirect: line {show(got, 'indirect')}, backend offers {offer or 'absent'}")
    for tok, fkey, bkey, dflt in (("ring-order", "ring-page-order", "max-ring-page-order", 0),
                                  ("queues", "multi-queue-num-queues", "multi-queue-max-queues", 1)):
        used = int(xs.get(f"{fe}/{fkey}", dflt))
        cap = int(xs.get(f"{be}/{bkey}", dflt))
        line = got.get(tok)
        ok = (line is not None and line.isdigit() and int(line) == used) or (
            tok not in got and used == dflt)
        c.check(ok and used <= cap,
                f"{p} {tok}: line {show(got, tok)}, frontend {fkey}={used}, backend {bkey}={cap}")


def got_features(s):
    got = {}
    if s in (None, "", "-"):
        return got
    for tok in s.split(","):
        k, _, v = tok.partition(":")
        got[k] = v or None
    return got


STALL_QEMU = "aio=native was specified, but is not supported in this build"


def check_minimal(c, name, specs, cfg):
    """The minimal example (examples/minimal): one line per disk with the
    first 32 bytes of its sector 0, which must be the lab image's own
    header (`xenblk-lab image=<X> sector=0 `), then the count."""
    p = f"{name}:"
    lines, src = guest_lines(cfg)
    for ln in lines:
        if ln.startswith("xenblk-panic"):
            c.check(False, f"{p} guest reported: {ln}")
    got = {}
    for ln in lines:
        m = re.match(r"^xenblk-minimal: vdev=(\d+) sector 0 begins \[([0-9a-f, ]+)\]$", ln)
        if m:
            got[m.group(1)] = bytes(int(b, 16) for b in m.group(2).split(", "))
    for spec in specs:
        v = vdev_number(spec.get("vdev", ""))
        img = (target_of(spec) or (None,))[0]
        want = f"xenblk-lab image={img} sector=0 ".encode()
        have = got.get(v, b"")
        c.check(have.startswith(want),
                f"{p} {spec.get('vdev')}: sector 0 read through xenblk begins {want!r} "
                f"(got {have[:len(want)]!r}, from {src})")
    closing = f"xenblk-minimal: read {len(specs)} disk(s)"
    c.check(closing in lines, f"{p} the minimal unikernel's last line is '{closing}'")


def check_readme(c, name, specs, cfg):
    """The README's guest ("Your own unikernel", built as written): its
    command line, one `myguest: vdev=<n> sectors=<s>` line per disk with the
    backend's `sectors`, and its last line."""
    p = f"{name}:"
    lines, src = guest_lines(cfg)
    xs = parse_xenstore(cfg["sections"].get("xenstore", []))
    for ln in lines:
        if ln.startswith("xenblk-panic"):
            c.check(False, f"{p} guest reported: {ln}")
    c.check('myguest: cmdline="readme"' in lines,
            f"{p} the README's guest prints its command line (from {src})")
    got = {}
    for ln in lines:
        m = re.match(r"^myguest: vdev=(\d+) sectors=(\d+)$", ln)
        if m:
            got[m.group(1)] = m.group(2)
    for spec in specs:
        v = vdev_number(spec.get("vdev", ""))
        be = next((val for k, val in xs.items()
                   if re.match(rf"^/local/domain/\d+/device/vbd/{v}/backend$", k)), None)
        want = xs.get(f"{be}/sectors") if be else None
        c.check(want is not None and got.get(v) == want,
                f"{p} {spec.get('vdev')}: the README's guest read sectors={got.get(v, 'nothing')}, "
                f"the backend wrote {want or 'nothing'}")
    closing = f"myguest: done, {len(specs)} disk(s)"
    c.check(closing in lines, f"{p} the README's guest's last line is '{closing}'")


def check_config(c, name, mode, specs, attempts):
    cfg = attempts[-1]
    p = f"{name}:"
    if mode == "own":
        # your own guest (make run-guest): it powered off, no panic
        c.check(cfg["status"] == "ok",
                f"{p} your guest powered off (attempt {cfg['attempt']}, status={cfg['status']})")
        lines, src = guest_lines(cfg)
        panics = [ln for ln in lines if ln.startswith("xenblk-panic")]
        c.check(not panics, f"{p} no xenblk-panic line ({panics or 'none'}, from {src})")
        return
    if mode in ("minimal", "readme"):
        c.check(cfg["status"] == "ok",
                f"{p} guest ran to its end (attempt {cfg['attempt']}, status={cfg['status']})")
        return (check_minimal if mode == "minimal" else check_readme)(c, name, specs, cfg)
    for i, a in enumerate(attempts[:-1]):
        print(f"note {p} RETRIED: attempt {i + 1} ended with status={a['status']}")
    if not c.check(cfg["status"] == "ok",
                   f"{p} guest ran to its end (attempt {cfg['attempt']}, status={cfg['status']})"):
        tail = cfg["sections"].get("console", [])[-5:]
        for ln in tail:
            print(f"     | {ln}")
    c.check(all(ok for _, ok in cfg["integrity"]) and cfg["integrity"],
            f"{p} serial log sections intact (line counts + cksums of "
            f"{len(cfg['integrity'])} sections; bad: "
            f"{[k for k, ok in cfg['integrity'] if not ok] or 'none'})")
    lines, src = guest_lines(cfg)
    xs = parse_xenstore(cfg["sections"].get("xenstore", []))
    cfg["xslog"] = parse_xslog(cfg["sections"].get("xs-log", []))
    closing = [ln for ln in lines if re.match(r"^xenblk: \d+ passed, \d+ failed$", ln)]
    ok = len(closing) == 1 and re.match(r"^xenblk: \d+ passed, 0 failed$", closing[0])
    c.check(ok, f"{p} one closing line with 0 failed ({closing or 'none'}, from {src})")
    for ln in lines:
        if ln.startswith("xenblk-panic") or "FAIL" in ln.split(":")[0]:
            c.check(False, f"{p} guest reported: {ln}")

    disks = [fields(ln) for ln in lines if ln.startswith("xenblk-disk ")]
    stalls = [ln for ln in lines if ln.startswith("xenblk-stall ")]
    verifies = [fields(ln) for ln in lines if ln.startswith("xenblk-verify ")]
    by_vdev = {d.get("vdev"): d for d in disks}
    # disks the operator detached while the guest ran (job.sh ACTION): gone
    # from xenstore by the time of the dump
    detached = {vdev_number(a.get("arg", "")) for a in actions_of(cfg)
                if a.get("cmd") == "block-detach" and a.get("rc") == "0"}
    fe_vdevs = sorted({m.group(1) for k in xs
                       for m in [re.match(r"^/local/domain/\d+/device/vbd/(\d+)/", k)] if m})
    c.check(fe_vdevs and sorted(set(by_vdev) - detached) == fe_vdevs,
            f"{p} one xenblk-disk line per frontend device (lines {sorted(by_vdev)}, "
            f"xenstore {fe_vdevs})")
    geo = {g.get("vdev"): g for g in (fields("x " + ln) for ln in cfg["sections"].get("geometry", [])
                                      if ln.startswith("LAB-GEOM "))}
    checks = {}
    for ln in lines:
        m = re.match(r"^xenblk-check (\S+): (ok|FAIL) ?(.*)$", ln)
        if m:
            checks[m.group(1)] = (m.group(2), m.group(3))
    for spec in specs:
        v = vdev_number(spec.get("vdev", ""))
        d = by_vdev.get(v)
        if v in detached:
            r = checks.get(f"{v}/hold-detached")
            c.check(d is not None and d.get("connected") == "yes" and r is not None and r[0] == "ok",
                    f"{name}: {spec.get('vdev')} connected, then detached by the operator: "
                    f"{'no hold-detached check' if r is None else r[0] + ' ' + r[1]}")
            continue
        if check_disk(c, name, spec, v, d, xs, stalls, cfg):
            check_geometry(c, f"{name}: {spec.get('vdev')}", spec, d, xs, geo.get(v))
            if mode == "verify" and cfg["status"] == "ok" and is_writable(d, xs):
                check_verify_disk(c, f"{name}: {spec.get('vdev')}", v, d, checks, verifies)
            if mode == "fs" and cfg["status"] == "ok" and d.get("connected", "yes") == "yes":
                check_fs_disk(c, f"{name}: {spec.get('vdev')}", v, cfg, lines, checks,
                              is_writable(d, xs))

    if mode == "hold" and cfg["status"] == "ok":
        check_hold(c, p, cfg, lines)
    if mode in ("verify", "hold") and cfg["status"] == "ok":
        writable = {v for v, d in by_vdev.items() if v not in detached and is_writable(d, xs)
                    and d.get("connected", "yes") == "yes"}
        c.check(writable <= {v.get("vdev") for v in verifies},
                f"{p} xenblk-verify regions for every writable disk "
                f"(writable {sorted(writable)}, verified {sorted({v.get('vdev') for v in verifies})})")
        for v in verifies:
            c.check(v.get("vdev") in writable,
                    f"{p} verify region on vdev {v.get('vdev')} is on a writable connected disk")
        sums = [fields("x " + ln) for ln in cfg["sections"].get("cksum", [])
                if ln.startswith("LAB-CKSUM ")]
        c.check(len(sums) == len(verifies),
                f"{p} dom0 checked every verify region ({len(sums)} of {len(verifies)})")
        for s in sums:
            c.check(s.get("match") == "yes",
                    f"{p} dom0 cksum vdev={s.get('vdev')} sector={s.get('sector')} "
                    f"count={s.get('count')}: guest {s.get('want')} image {s.get('got')}")


def check_disk(c, name, spec, v, d, xs, stalls, cfg):
    vname = spec.get("vdev")
    p = f"{name}: {vname}"
    fe = next((k.rsplit("/", 1)[0] for k in xs
               if re.match(rf"^/local/domain/\d+/device/vbd/{v}/backend$", k or "")), None)
    be = xs.get(f"{fe}/backend") if fe else None
    if not c.check(be is not None, f"{p} frontend dir has a backend path ({be})"):
        return
    # The toolstack wrote what the matrix asked for.
    want_type = spec.get("backendtype", "phy")
    want_mode = "r" if spec.get("access", "rw") in ("r", "ro") else "w"
    want_dio = "1" if "direct-io-safe" in spec["flags"] else None
    if want_type == "dm-qdisk":
        # A xen-disk device of QEMU's command line: QEMU's xen-bus made the
        # directories, and no toolstack wrote type, mode or params.
        c.check("/backend/qdisk/" in be and xs.get(f"{be}/type") is None
                and xs.get(f"{be}/params") is None and xs.get(f"{be}/direct-io-safe") is None,
                f"{p} QEMU's own xen-disk: backend under qdisk/ ({be}), no toolstack keys "
                f"(type={xs.get(f'{be}/type', 'absent')} params={xs.get(f'{be}/params', 'absent')})")
    else:
        c.check(f"/backend/{'qdisk' if want_type == 'qdisk' else 'vbd'}/" in be
                and xs.get(f"{be}/type") == want_type and xs.get(f"{be}/mode") == want_mode
                and xs.get(f"{be}/direct-io-safe") == want_dio,
                f"{p} xenstore has what the disk spec asked (type={xs.get(f'{be}/type')} "
                f"mode={xs.get(f'{be}/mode')} direct-io-safe={xs.get(f'{be}/direct-io-safe', 'absent')})")
    if not c.check(d is not None, f"{p} has a xenblk-disk line"):
        return False
    c.check(d.get("backend") == be, f"{p} backend {d.get('backend')} == frontend's {be}")
    for field, key in (("type", "type"), ("sectors", "sectors"), ("sector-size", "sector-size"),
                       ("mode", "mode")):
        # A key the backend has not written (a disk that never connected) may
        # be printed empty, as "-", or as "absent".
        got = d.get(field)
        got = None if got in (None, "", "-", "absent") else got
        c.check(got == xs.get(f"{be}/{key}"),
                f"{p} {field}={d.get(field, '(missing)')} == xenstore "
                f"{key}={xs.get(f'{be}/{key}', 'absent')}")
    c.check(d.get("direct-io-safe") == xs.get(f"{be}/direct-io-safe", "absent"),
            f"{p} direct-io-safe={d.get('direct-io-safe')} == xenstore "
            f"{xs.get(f'{be}/direct-io-safe', 'absent')}")
    state = xs.get(f"{be}/state")
    connected = d.get("connected", "yes")
    stall_expected = want_type == "qdisk" and want_dio == "1"
    if stall_expected:
        # Debian's qemu-system-xen has no libaio: qdisk + direct-io-safe never
        # connects. The guest must say so after a bounded wait.
        c.check(connected == "no" and d.get("backend-state") == "1" and state == "1",
                f"{p} qdisk+direct-io-safe reported as not connected: connected={connected} "
                f"backend-state={d.get('backend-state')} (xenstore state={state})")
        c.check(d.get("cause") == "qdisk-direct-io-safe", f"{p} cause={d.get('cause')}")
        vdev_stalls = [s for s in stalls if s.startswith(f"xenblk-stall vdev={v}:")]
        c.check(any(all(w in s.lower() for w in ("direct-io-safe", "qdisk", "aio"))
                    for s in vdev_stalls),
                f"{p} xenblk-stall explanation names direct-io-safe, qdisk and aio "
                f"({vdev_stalls or 'none'})")
        qlog = cfg["sections"].get("qemu-dm", [])
        c.check(any(STALL_QEMU in ln for ln in qlog),
                f"{p} dom0's qemu-dm log says \"{STALL_QEMU}\"")
        return False
    # The dump is taken after the guest finished, when a frontend that closed
    # its devices left the backend Closing/Closed and removed its ring keys.
    # xenstored's access log (the xs-log section) has what was written
    # meanwhile: the frontend's (its own domain's connection) ring-ref keys
    # and states, and QEMU's backend states (oxenstored does not log the
    # writes of dom0's kernel, so blkback's states are not there: for it, the
    # dump's state 4..6 and the frontend having gone Connected, which the
    # driver does only once the backend is, stand in); nothing was written
    # under an error/ node.
    log = cfg.get("xslog", {})
    be_states = [val for conn, op, val in log.get(f"{be}/state", []) if op == "write"]
    dom = re.match(r"^/local/domain/(\d+)/", fe).group(1)
    fe_states = [val for conn, op, val in log.get(f"{fe}/state", [])
                 if op == "write" and conn.split(".")[0] == f"D{dom}"]
    fe_ring = sorted({k.rsplit("/", 1)[1] for k, w in log.items()
                      if re.match(rf"^{re.escape(fe)}/(queue-\d+/)?ring-ref", k)
                      and any(conn.split(".")[0] == f"D{dom}" and op == "write" for conn, op, _ in w)})
    ring = any(re.match(rf"^{re.escape(fe)}/(queue-\d+/)?ring-ref", k) for k in xs) or bool(fe_ring)
    errors = [k for k in xs if "/error/" in k and f"/{v}" in k]
    reached = state == "4" or "4" in be_states or (state in ("5", "6") and "4" in fe_states)
    if not c.check(connected == "yes" and reached and ring and not errors,
                   f"{p} connected={connected}, backend reached Connected (backend states written "
                   f"{be_states or 'not logged'}, now {state}; frontend states {fe_states or 'not logged'}; "
                   f"frontend ring keys written by "
                   f"domain {dom}: {(str(len(fe_ring)) + ' ring-ref keys') if fe_ring else ('in the dump' if ring else 'NONE')}; error nodes "
                   f"{errors or 'none'})"):
        return False
    # the frontend's own keys as last written (the dump lost them at close)
    fe_keys = dict(xs)
    for k, w in log.items():
        if k.startswith(fe + "/") and k not in fe_keys:
            writes = [val for conn, op, val in w if op == "write" and conn.split(".")[0] == f"D{dom}"]
            if writes:
                fe_keys[k] = writes[-1]
    check_features(c, p, fe_keys, be, fe, d.get("features"))
    # docs/SECTORS.md: the flag goes to qdisk (which counts in logical
    # blocks), never to blkback.
    flag = fe_keys.get(f"{fe}/feature-large-sector-size")
    want_flag = "1" if want_type in ("qdisk", "dm-qdisk") else None
    c.check(flag == want_flag,
            f"{p} frontend feature-large-sector-size={flag or 'absent'} "
            f"(wanted {want_flag or 'absent'} for {want_type})")
    return True


def is_writable(d, xs):
    """A disk the guest may write: `mode=w`, or (QEMU 7.2's own xen-disk
    writes no `mode`) no mode and VDISK_READONLY (4) clear in `info`."""
    if d.get("mode") in ("w", "r"):
        return d.get("mode") == "w"
    info = xs.get(f"{d.get('backend')}/info", "0")
    return info.isdigit() and not int(info) & 4


def num(v):
    return int(v) if v is not None and v.isdigit() else None


def check_geometry(c, p, spec, d, xs, g):
    """Capacity, sector size and the unit of `sectors`, from the guest's line,
    against the backend kind's rule (docs/SECTORS.md), the image's size and
    dom0's own view of the device (blockdev)."""
    kind = spec.get("backendtype", "phy")
    qdisk = kind in ("qdisk", "dm-qdisk")
    want_unit = "logical" if qdisk else "512"
    c.check(d.get("sectors-unit") == want_unit,
            f"{p} sectors-unit={d.get('sectors-unit', '(missing)')}: {kind} counts in "
            f"{'logical blocks' if qdisk else '512-byte units'} ({want_unit})")
    img, mib, devkind = target_of(spec)
    if not c.check(g is not None, f"{p} dom0 reported its view of the disk (geometry section)"):
        return
    want_bytes = mib << 20
    c.check(num(g.get("bytes")) == want_bytes,
            f"{p} image {img} is {g.get('bytes')} bytes in dom0 (matrix: {mib} MiB)")
    sectors, ss = num(d.get("sectors")), num(d.get("sector-size"))
    if sectors is None or ss is None:
        c.check(False, f"{p} sectors={d.get('sectors')} sector-size={d.get('sector-size')}: not numbers")
        return
    dev_ss, dev_pss, dev_size = num(g.get("getss")), num(g.get("getpbsz")), num(g.get("getsize64"))
    if dev_size is not None:
        c.check(dev_size == want_bytes,
                f"{p} dom0's {g.get('dev')}: blockdev --getsize64 {dev_size} == image {want_bytes}")
    if not qdisk:
        # blkback: sector-size is the device's logical block size, sectors
        # are 512-byte units whatever it is.
        c.check(dev_ss is not None and ss == dev_ss,
                f"{p} sector-size={ss} == dom0's blockdev --getss {g.get('getss')} of {g.get('dev')}")
        pss = num(xs.get(f"{d.get('backend')}/physical-sector-size"))
        c.check(dev_pss is not None and pss == dev_pss,
                f"{p} backend physical-sector-size={pss} == dom0's blockdev --getpbsz {g.get('getpbsz')}")
        c.check(sectors * 512 == want_bytes,
                f"{p} capacity: sectors={sectors} x 512 = {sectors * 512} == image {want_bytes} bytes")
    else:
        # qdisk: sectors in logical blocks of QEMU's logical_block_size, which
        # libxl never sets (512 whatever the device says); a xen-disk of
        # QEMU's own command line has the one it was given.
        want_ss = num(spec.get("logical-block-size")) if kind == "dm-qdisk" else 512
        c.check(ss == want_ss,
                f"{p} sector-size={ss} == {want_ss} ("
                + ("logical_block_size on QEMU's command line" if kind == "dm-qdisk"
                   else "QEMU's default: libxl passes no block size")
                + (f"; dom0's blockdev --getss of {g.get('dev')} says {dev_ss}" if dev_ss else "") + ")")
        if dev_ss is not None and dev_ss != ss:
            print(f"note {p} qdisk publishes sector-size={ss} for a device of {dev_ss}-byte "
                  f"logical blocks ({g.get('dev')})")
        c.check(sectors * ss == want_bytes,
                f"{p} capacity: sectors={sectors} x {ss} = {sectors * ss} == image {want_bytes} bytes")


def check_verify_disk(c, p, v, d, checks, verifies):
    """verify on a writable disk: misaligned requests refused, and the
    regions dom0 checked reach the last byte of the disk."""
    ss = num(d.get("sector-size")) or 512
    names = ["refuse-misaligned"] + (["refuse-misaligned-512", "refuse-misaligned-read"]
                                     if ss > 512 else [])
    for n in names:
        r = checks.get(f"{v}/{n}")
        c.check(r is not None and r[0] == "ok" and "Misaligned" in r[1],
                f"{p} {n}: {'missing' if r is None else r[0] + ' ' + r[1]}")
    ends = [num(r.get("sector")) + num(r.get("count")) for r in verifies
            if r.get("vdev") == v and num(r.get("sector")) is not None and num(r.get("count")) is not None]
    sectors = num(d.get("sectors")) or 0
    cap512 = sectors if d.get("sectors-unit") == "512" else sectors * ss // 512
    c.check(bool(ends) and max(ends) == cap512,
            f"{p} verify regions end at the disk's last byte (512-byte sector "
            f"{max(ends) if ends else 'none'} == capacity {cap512})")
    for r in verifies:
        if r.get("vdev") == v and ss > 512:
            c.check(num(r.get("sector")) % (ss // 512) == 0 and num(r.get("count")) % (ss // 512) == 0,
                    f"{p} verify region sector={r.get('sector')} count={r.get('count')} is whole "
                    f"{ss}-byte sectors")


def actions_of(cfg):
    """The operator's xl commands job.sh ran (ACTION): LAB-ACTION fields."""
    return [fields("x " + ln) for ln in cfg["sections"].get("action", [])
            if ln.startswith("LAB-ACTION ")]


def check_hold(c, p, cfg, lines):
    """hold: every xl command of the operator (job.sh ACTION) returned 0,
    and the guest acknowledged the shutdown request, drained, flushed and
    read back every writable disk still attached (its hold-* checks,
    counted in the closing line) before it went; the regions' cksums are
    checked by the verify part, a detached disk by the per-disk part."""
    acts = actions_of(cfg)
    c.check(bool(acts), f"{p} the operator's xl commands ran ({len(acts)})")
    for a in acts:
        c.check(a.get("rc") == "0",
                f"{p} the operator's xl {a.get('cmd')} {a.get('arg')} at {a.get('at')} s "
                f"returned {a.get('rc')} after {a.get('seconds')} s")
    want = next((a.get("cmd") for a in acts if a.get("cmd") in ("shutdown", "reboot")), None)
    word = {"shutdown": "poweroff", "reboot": "reboot"}.get(want)
    acked = [ln for ln in lines if ln.startswith("xenblk-control request=")]
    c.check(word is not None and len(acked) == 1 and
            acked[0].startswith(f"xenblk-control request={word} acknowledged=yes"),
            f"{p} the guest acknowledged the toolstack's {word}: {acked or 'no xenblk-control line'}")
    for chk in ("hold-drain", "hold-flush", "hold-readback"):
        seen = [ln for ln in lines if re.match(rf"^xenblk-check \d+/{chk}: ok", ln)]
        c.check(bool(seen), f"{p} {chk} passed on the writable disks ({len(seen)} line(s))")


def check_fs_disk(c, p, v, cfg, lines, checks, writable):
    """fs on a disk (job.sh mk_fat, fs_back): the guest listed every file
    dom0 put there with its size, read DATA.BIN equal to dom0's cksum, wrote
    GUEST.TXT (on a read-only disk: was refused with ReadOnly), dom0 read
    that back equal with mtools (did not find it), and found the filesystem
    clean (fsck.fat -n)."""
    put = [fields("x " + ln) for ln in cfg["sections"].get("fs-put", [])
           if ln.startswith("LAB-FS-PUT ")]
    put = {f["name"]: f["bytes"] for f in put if f.get("vdev") == v}
    seen = {}
    for ln in lines:
        f = fields(ln)
        if ln.startswith("xenblk-fs ") and f.get("vdev") == v and "entry" in f:
            seen[f["entry"]] = f.get("size")
    c.check(bool(put), f"{p} dom0 made a FAT filesystem ({len(put)} files put)")
    for name, size in sorted(put.items()):
        c.check(seen.get(name) == size,
                f"{p} the guest lists {name} with dom0's size {size} (got {seen.get(name, 'no entry')})")
    for chk in ("fs-mount", "fs-read", "fs-write" if writable else "fs-write-refused"):
        r = checks.get(f"{v}/{chk}")
        c.check(r is not None and r[0] == "ok",
                f"{p} {chk}: {'missing' if r is None else r[0] + ' ' + r[1]}")
    back = [fields("x " + ln) for ln in cfg["sections"].get("fs-back", [])
            if ln.startswith("LAB-FS ")]
    back = [b for b in back if b.get("vdev") == v]
    c.check(len(back) == 1 and back[0].get("match") == "yes"
            and (back[0].get("want") != "absent") == writable,
            f"{p} dom0 read the guest's file back with mtools, equal "
            f"{'' if writable else '(a read-only disk: absent) '}"
            f"({[(b.get('file'), b.get('want'), b.get('got')) for b in back] or 'no LAB-FS line'})")
    fsck = [fields("x " + ln) for ln in cfg["sections"].get("fs-back", [])
            if ln.startswith("LAB-FSCK ")]
    fsck = [f for f in fsck if f.get("vdev") == v]
    c.check(len(fsck) == 1 and fsck[0].get("rc") == "0",
            f"{p} fsck.fat -n finds the filesystem clean after the guest "
            f"(rc {[f.get('rc') for f in fsck] or 'none'})")


def show(feats, tok):
    if tok not in feats:
        return "absent"
    return feats[tok] or "present"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--show" in sys.argv
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    matrix = parse_matrix(args[0])
    try:
        configs = parse_log(args[1])
    except FileNotFoundError:
        print(f"FAIL no serial log at {args[1]}: QEMU never ran (see the lab's messages above)")
        print("lab: 0 passed, 1 failed")
        return 1
    c = Checks()
    for name, mode, specs in matrix:
        attempts = configs.get(name)
        if show and attempts:
            lines, src = guest_lines(attempts[-1])
            xs = parse_xenstore(attempts[-1]["sections"].get("xenstore", []))
            print(f"---- {name} ({mode}): guest output ({src}) ----")
            for ln in lines:
                print(f"  {ln}")
                be = fields(ln).get("backend") if ln.startswith("xenblk-disk ") else None
                if be:
                    # What the toolstack wrote for this disk (QEMU's own
                    # xen-disk writes no type or params), beside the line.
                    keys = " ".join(f"{k}={xs.get(f'{be}/{k}', 'absent')}"
                                    for k in ("type", "mode", "direct-io-safe", "params"))
                    print(f"      xenstore {be}: {keys}")
        if not c.check(bool(attempts), f"{name}: configuration ran"):
            continue
        check_config(c, name, mode, specs, attempts)
    print(f"lab: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
