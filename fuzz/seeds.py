#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/hostile_backend/ that reach the
harness's newer steps (inputs with the extension byte). The byte layout is
the one fuzz/src/hostile.rs reads; rerun after changing it:
    python3 fuzz/seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "hostile_backend")

# flags
QDISK, SS4K, EOPNOTSUPP, ORDER1, QUEUES2, NO_INDIRECT, NO_PERSISTENT, EXT = 1, 2, 4, 8, 16, 32, 64, 128
# extension byte
SMALL_GT, ONE_PAGE_RINGS, SHORT_BOUNDS, PLAN, INDIRECT256 = 1, 2, 4, 8, 16
# steps (op % 24)
READ, WRITE, FLUSH, DISCARD, RELEASE, POKE, POKE_PROD, NOTIFY, DRAIN = 0, 2, 3, 4, 5, 7, 8, 9, 10
FAULTS, XENSTORE, BLOCKING, MISC, BIG, IDLE_WAIT, SCRIBBLE, RESIZE = 12, 13, 14, 15, 16, 18, 19, 20
EMPTY_IO, REPROBE, DISCARD2 = 21, 22, 23

SAB_KEYS = ["sector-size", "sectors", "info", "physical-sector-size", "feature-persistent",
            "feature-max-indirect-segments", "max-ring-page-order", "multi-queue-max-queues",
            "feature-flush-cache", "feature-barrier", "feature-discard", "discard-granularity",
            "discard-alignment", "discard-secure", "mode", "physical-device"]
EDGE = ["0", "1", "2", "4", "512", "1000", "4096", "8192", "2147483648", "4097", "-1", "",
        " 3 ", "99999999999999999999", "18446744073709551615", "18014398509481983",
        "18014398509481984", "36028797018963967", "2251799813685247", "2251799813685248",
        "8192\n", "+8", "0x10", "w"]


def u16(v):
    return list(struct.pack("<H", v))


def u64(v):
    return list(struct.pack("<Q", v))


def edge(v):
    return [EDGE.index(v)]


# sabotage: (when, act)
def before():
    return [0]


def on_frontend(state):
    return [3 | state << 3]


def on_backend(state):
    return [5 | state << 3]


def be_key(key, value):
    return [0, SAB_KEYS.index(key)] + edge(value)


def be_state(i):  # "5", "6", "1", "3", "2", "7", "x"
    return [2 | i << 3]


def backend_id(i):  # "1", "32752", "65535", "2", "x", "", "-1", "4294967296", "0"
    return [4 | i << 3]


def detach():
    return [7]


def plan(*entries):
    out = [len(entries) - 1]
    for w, a in entries:
        out += w + a
    return out


def big(how_len, how_op, *rest):
    return [BIG, how_len | how_op << 2] + list(rest)


SEEDS = {
    # Blocking reads and writes of 1 MiB, 2.5 MiB (past the rings' 1408 KiB),
    # one ring's worth, and ending past the end of the disk.
    "seed-big-blocking": [EXT | NO_INDIRECT, 0]
    + big(0, 0, 255, 0) + u16(16) + [0x5a]          # 1 MiB read at 16
    + big(1, 2) + u16(5120) + [0] + u16(100)         # 2.5 MiB write at 100
    + big(2, 0, 2, 6, 2, 0x33)                       # ring capacity, ending at the end
    + big(3, 1) + u16(600) + [5, 3, 0x77]            # read 3 sectors before the end
    + big(1, 2) + u16(4096) + [6, 4]                 # a write ending past the end
    + big(0, 0, 8, 7) + u64(2**63) + [0x11]          # anywhere
    + [EMPTY_IO, DRAIN],
    # An event on the idle second queue, then waits.
    "seed-idle-queue-wait": [EXT | QUEUES2, 0]
    + [IDLE_WAIT, 1, 3, 3, IDLE_WAIT, 0x81, 0, 7, READ] + u16(8) + [8, 1]
    + [RELEASE, 0, 0, DRAIN, IDLE_WAIT, 0, 1, 1],
    # A backend writing into read pages it kept mapped, before the frontend
    # looks at the response.
    "seed-scribble-kept": [EXT | NO_PERSISTENT, 0]
    + [FAULTS, 1, READ] + u16(4) + [8, 0x42] + [RELEASE, 0, 0, SCRIBBLE, 0xee, DRAIN]
    + [EMPTY_IO, MISC, 0],
    # Resizes to hostile sizes, discards at the new end.
    "seed-resize-discard-end": [EXT, 0]
    + [RESIZE] + edge("18014398509481983") + [DISCARD2, 4 | 3] + u64(17) + [5, 0]
    + [RESIZE] + edge("36028797018963967") + [DISCARD2, 5] + [0, 0]
    + [RESIZE] + edge("8192") + [DISCARD2, 4 | 2] + u16(64) + [5, 1]
    + [RESIZE] + edge("2251799813685248") + [DRAIN],
    # The same on 4 KiB sectors.
    "seed-resize-discard-end-4k": [EXT | SS4K, 0]
    + [RESIZE] + edge("2251799813685247") + [DISCARD2, 4 | 3] + u64(9) + [5, 0]
    + [RESIZE] + edge("4097") + [MISC, 0],
    # sector-size 1000 before the probe; then the probe again.
    "seed-probe-sector-size": [EXT | QDISK, PLAN] + plan((before(), be_key("sector-size", "1000")))
    + [READ] + u16(0) + [1, 0, RELEASE, 0, 0, DRAIN],
    # sector-size 8192 and huge sectors written when the backend connects.
    "seed-probe-connected-keys": [EXT, PLAN]
    + plan((on_backend(4), be_key("sector-size", "8192")),
           (on_backend(4), be_key("sectors", "18446744073709551615")))
    + [BLOCKING] + u16(0) + [8, 0, 0x21],
    # backend-id naming no backend, then its own domain.
    "seed-probe-backend-id": [EXT, PLAN] + plan((before(), backend_id(2))) + [EMPTY_IO],
    "seed-probe-own-backend-id": [EXT, PLAN] + plan((before(), backend_id(0))) + [EMPTY_IO],
    # The backend state Closing once the frontend is Initialised.
    "seed-probe-closing-midconnect": [EXT, PLAN] + plan((on_frontend(3), be_state(0)))
    + [REPROBE, EMPTY_IO],
    # A slow hotplug script against a 20 ms connect bound.
    "seed-probe-slow-hotplug": [EXT, SHORT_BOUNDS, 19, 5, 30] + [BIG, 0, 16, 0] + u16(0) + [1],
    # A backend that maps one-page rings only, advertising order 1.
    "seed-probe-refused-ring": [EXT | ORDER1, ONE_PAGE_RINGS | PLAN]
    + plan((before(), be_key("max-ring-page-order", "1"))) + [REPROBE],
    # Transaction storms, feature keys turned into garbage, a detach.
    "seed-probe-storm-detach": [EXT | QUEUES2, PLAN]
    + plan((before(), [6 | 9 << 3]), (before(), be_key("feature-persistent", "2")),
           (on_frontend(3), detach())) + [EMPTY_IO],
    # One grant frame, two queues with persistent grants and 256 indirect
    # segments: 1 MiB reads on an idle device, again and again.
    "seed-small-grant-table": [EXT | QUEUES2, SMALL_GT | INDIRECT256]
    + (big(0, 0, 255, 0) + u16(0) + [1]) * 6,
    # Close and probe again, twice; empty I/O in between.
    "seed-close-reprobe": [EXT | QUEUES2 | ORDER1, 0]
    + [WRITE] + u16(2) + [4, RELEASE, 0, 0, DRAIN, REPROBE, EMPTY_IO, REPROBE, READ] + u16(2) + [4, 9]
    + [RELEASE, 0, 0, DRAIN],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(bytes(data))


if __name__ == "__main__":
    main()
