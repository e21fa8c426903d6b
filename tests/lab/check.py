#!/usr/bin/env python3
"""Checks a lab serial log against what the toolstack really wrote.

usage: check.py MATRIX SERIAL_LOG [--show]

For every configuration of MATRIX (its last attempt in the log) it compares
each `xenblk-disk` line of the guest (docs/LINES.md) field by field with the
xenstore-ls dump that dom0 took before destroying the guest, checks the
closing `xenblk: N passed, M failed` line, the dom0-side cksums of every
`xenblk-verify` region, and that the dump matches the disk specs of MATRIX.
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
    m = re.fullmatch(r"xvd([a-z])", name)
    return str(51712 + 16 * (ord(m.group(1)) - 97)) if m else None


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
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
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


def check_features(c, p, xs, be, fe, listed, fe_keys=True):
    """features= is what is in use (README, "The `xenblk-disk` line"),
    checked against the backend's offers and, while the frontend's keys are
    still there (fe_keys), against what the frontend published."""
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
    # After a clean close the frontend's feature-persistent is gone: what it
    # advertised is then unknown, and only the backend's offer bounds it.
    fe_p = xs.get(f"{fe}/feature-persistent") == "1" or (
        not fe_keys and "persistent" in got)
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
        line = got.get(tok)
        if fe_keys:
            used = int(xs.get(f"{fe}/{fkey}", dflt))
        else:
            # Removed at close: the line's own value, bounded by the offer.
            used = int(line) if line is not None and line.isdigit() else dflt
        cap = int(xs.get(f"{be}/{bkey}", dflt))
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


def check_config(c, name, mode, specs, attempts):
    cfg = attempts[-1]
    p = f"{name}:"
    if len(attempts) > 1:
        print(f"note {p} RETRIED: attempt 1 ended with status={attempts[0]['status']}")
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
    fe_vdevs = sorted({m.group(1) for k in xs
                       for m in [re.match(r"^/local/domain/\d+/device/vbd/(\d+)/", k)] if m})
    c.check(fe_vdevs and sorted(by_vdev) == fe_vdevs,
            f"{p} one xenblk-disk line per frontend device (lines {sorted(by_vdev)}, "
            f"xenstore {fe_vdevs})")
    for spec in specs:
        v = vdev_number(spec.get("vdev", ""))
        check_disk(c, name, spec, v, by_vdev.get(v), xs, stalls, cfg)

    if mode == "verify" and cfg["status"] == "ok":
        writable = {v for v, d in by_vdev.items() if d.get("mode") == "w"
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
    c.check(f"/backend/{'qdisk' if want_type == 'qdisk' else 'vbd'}/" in be
            and xs.get(f"{be}/type") == want_type and xs.get(f"{be}/mode") == want_mode
            and xs.get(f"{be}/direct-io-safe") == want_dio,
            f"{p} xenstore has what the disk spec asked (type={xs.get(f'{be}/type')} "
            f"mode={xs.get(f'{be}/mode')} direct-io-safe={xs.get(f'{be}/direct-io-safe', 'absent')})")
    if not c.check(d is not None, f"{p} has a xenblk-disk line"):
        return
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
        return
    # The dump is taken after the guest finished, when a frontend that closed
    # its devices left the backend Closing/Closed: Connected (4) was reached if
    # the state is 4..6, and nothing was written under an error/ node. The
    # frontend's ring keys are either still published (a guest that did not
    # close) or, after a clean close, removed with the frontend Closed (6):
    # the driver's teardown takes back every key it wrote.
    ring = any(re.match(rf"^{re.escape(fe)}/(queue-\d+/)?ring-ref", k) for k in xs)
    closed = not ring and xs.get(f"{fe}/state") == "6"
    errors = [k for k in xs if "/error/" in k and f"/{v}" in k]
    how = "ring published" if ring else "closed, ring keys removed" if closed else "ring MISSING"
    if not c.check(connected == "yes" and state in ("4", "5", "6") and (ring or closed)
                   and not errors,
                   f"{p} connected={connected}, backend reached Connected (state now {state}, "
                   f"frontend {how}, error nodes {errors or 'none'})"):
        return
    check_features(c, p, xs, be, fe, d.get("features"), fe_keys=ring)


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
    configs = parse_log(args[1])
    c = Checks()
    for name, mode, specs in matrix:
        attempts = configs.get(name)
        if show and attempts:
            lines, src = guest_lines(attempts[-1])
            print(f"---- {name} ({mode}): guest output ({src}) ----")
            for ln in lines:
                print(f"  {ln}")
        if not c.check(bool(attempts), f"{name}: configuration ran"):
            continue
        check_config(c, name, mode, specs, attempts)
    print(f"lab: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
