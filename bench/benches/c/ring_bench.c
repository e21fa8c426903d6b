/*
 * C baseline of the xenblk ring benchmark (benches/ring.rs): the shared-ring
 * macros of Xen's public io/ring.h, used the way Linux's xen-blkfront and
 * xen-blkback use them, over the blkif ring types of io/blkif.h.
 *
 * The Rust harness owns the memory, the threads and the timing; this file only
 * provides the two loops (front and back) and a single-threaded ping-pong for
 * instruction counts. benches/ring.rs has the same loops over
 * xenblk::ring::{FrontRing, BackRing}; keep the two in step (docs/PERFORMANCE.md
 * describes the policy both follow).
 *
 * build.rs compiles this file twice with -O2: with RB_MB_LOCKED_ADD (xen_mb()
 * is `lock; addl $0,-4(%rsp)`, what Linux/x86-64 uses for virt_mb()) and with
 * RB_MB_MFENCE (xen_mb() is `mfence`, what __sync_synchronize() and Rust's
 * fence(SeqCst) emit). RB_VARIANT names the exported symbols of each build.
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>

/*
 * Barriers as Linux defines them on x86-64: TSO orders stores after stores and
 * loads after loads, so rmb/wmb only stop the compiler; the full barrier must
 * order a store before a later load, which takes a locked instruction or
 * mfence. ring.h (for interface versions < 0x00030208, the default for
 * non-Xen code) maps xen_mb/xen_rmb/xen_wmb onto these names.
 */
#if defined(RB_MB_LOCKED_ADD)
#define mb() __asm__ __volatile__("lock; addl $0,-4(%%rsp)" ::: "memory", "cc")
#elif defined(RB_MB_MFENCE)
#define mb() __asm__ __volatile__("mfence" ::: "memory")
#else
#error "define RB_MB_LOCKED_ADD or RB_MB_MFENCE"
#endif
#define rmb() __asm__ __volatile__("" ::: "memory")
#define wmb() __asm__ __volatile__("" ::: "memory")

#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#if !defined(__x86_64__)
#error "the C ring baseline is written for x86-64"
#endif

#define RB_CAT3(a, b, c) a##b##c
#define RB_NAME(v, n) RB_CAT3(rb_c_, v, n)
#define RB_FN(n) RB_NAME(RB_VARIANT, n)

/* READ_ONCE of Linux: the one read of the peer's producer index. */
#define RB_READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))

#define RB_PAGE_SIZE 4096u

/*
 * The "event channel" of one direction, shared with benches/ring.rs (struct
 * Event there): a pending flag on its own cache line. Notify sets it (the
 * hypercall of real Xen); the waiter spins until it can clear it
 * (test-and-clear of the pending bit), pausing, and yields the CPU every
 * RB_SPINS_PER_YIELD spins so a descheduled peer can run.
 */
struct rb_event {
    uint32_t pending;
    uint8_t pad[60];
};

struct rb_events {
    struct rb_event to_back;  /* front -> back: "requests queued" */
    struct rb_event to_front; /* back -> front: "responses queued" */
};

/* What one loop reports back; mirrored by struct Stats in benches/ring.rs. */
struct rb_stats {
    uint64_t done;          /* round trips completed (front) or answered (back) */
    uint64_t notifications; /* notify() calls made */
    uint64_t waits;         /* times the loop went to wait() */
    uint64_t checksum;      /* sum of ids seen, checked by the harness */
    uint64_t errors;        /* protocol violations or wrong responses */
};

#define RB_SPINS_PER_YIELD 4096u

static inline void rb_notify(struct rb_event *ev)
{
    __atomic_store_n(&ev->pending, 1, __ATOMIC_RELEASE);
}

static inline void rb_wait(struct rb_event *ev)
{
    unsigned spins = 0;
    for (;;) {
        if (__atomic_load_n(&ev->pending, __ATOMIC_RELAXED) &&
            __atomic_exchange_n(&ev->pending, 0, __ATOMIC_ACQUIRE))
            return;
        __builtin_ia32_pause();
        if (++spins == RB_SPINS_PER_YIELD) {
            spins = 0;
            sched_yield();
        }
    }
}

/* The request every round trip sends: a one-segment read, like blkfront's. */
static inline void rb_fill_request(struct blkif_request *req, uint64_t n)
{
    memset(req, 0, sizeof(*req));
    req->operation = BLKIF_OP_READ;
    req->nr_segments = 1;
    req->handle = 0xca00;
    req->id = n;
    req->sector_number = n * 8;
    req->seg[0].gref = (grant_ref_t)n;
    req->seg[0].first_sect = 0;
    req->seg[0].last_sect = 7;
}

/* Initialises the shared ring (SHARED_RING_INIT); the harness calls this
 * before starting the two loops. */
void RB_FN(_init)(void *shared)
{
    SHARED_RING_INIT((struct blkif_sring *)shared);
}

/* Front end: produce up to `batch` requests, push-and-check-notify, take the
 * responses; when no request can be sent, final-check and wait. */
static void rb_front(struct blkif_front_ring *fr, uint64_t n, unsigned batch,
                     struct rb_events *ev, struct rb_stats *st)
{
    uint64_t sent = 0, done = 0, notes = 0, waits = 0, sum = 0, errors = 0;

    while (done < n) {
        unsigned k = 0;
        int notify;

        while (k < batch && sent < n && !RING_FULL(fr)) {
            struct blkif_request req;
            rb_fill_request(&req, sent);
            *RING_GET_REQUEST(fr, fr->req_prod_pvt) = req;
            fr->req_prod_pvt++;
            sent++;
            k++;
        }
        if (k) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(fr, notify);
            if (notify) {
                notes++;
                rb_notify(&ev->to_back);
            }
        }

        for (;;) {
            RING_IDX rp = RB_READ_ONCE(fr->sring->rsp_prod), i;
            int more;

            xen_rmb(); /* rsp_prod before the responses it covers */
            if (RING_RESPONSE_PROD_OVERFLOW(fr, rp)) {
                st->errors = errors + 1;
                return;
            }
            for (i = fr->rsp_cons; i != rp; i++) {
                struct blkif_response rsp;
                RING_COPY_RESPONSE(fr, i, &rsp);
                if (rsp.id != done || rsp.status != BLKIF_RSP_OKAY)
                    errors++;
                sum += rsp.id;
                done++;
            }
            fr->rsp_cons = i;
            if ((sent < n && !RING_FULL(fr)) || done == n)
                break;
            RING_FINAL_CHECK_FOR_RESPONSES(fr, more);
            if (!more) {
                waits++;
                rb_wait(&ev->to_front);
            }
        }
    }
    st->done = done;
    st->notifications = notes;
    st->waits = waits;
    st->checksum = sum;
    st->errors = errors;
}

/* Back end: take every request, answer each, push-and-check-notify every
 * `batch` responses and when drained; then final-check and wait. With
 * `threaded == 0` it returns when drained instead of waiting. */
static int rb_back(struct blkif_back_ring *br, uint64_t n, unsigned batch,
                   struct rb_events *ev, struct rb_stats *st, int threaded)
{
    int more;

    do {
        RING_IDX rp = RB_READ_ONCE(br->sring->req_prod), rc = br->req_cons;
        unsigned k = 0;
        int notify;

        xen_rmb(); /* req_prod before the requests it covers */
        if (RING_REQUEST_PROD_OVERFLOW(br, rp)) {
            st->errors++;
            return -1;
        }
        while (rc != rp && !RING_REQUEST_CONS_OVERFLOW(br, rc)) {
            struct blkif_request req;
            struct blkif_response rsp;

            RING_COPY_REQUEST(br, rc, &req);
            br->req_cons = ++rc;
            memset(&rsp, 0, sizeof(rsp));
            rsp.id = req.id;
            rsp.operation = req.operation;
            rsp.status = BLKIF_RSP_OKAY;
            *RING_GET_RESPONSE(br, br->rsp_prod_pvt) = rsp;
            br->rsp_prod_pvt++;
            st->checksum += req.id;
            st->done++;
            if (++k == batch) {
                RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(br, notify);
                if (notify) {
                    st->notifications++;
                    if (threaded)
                        rb_notify(&ev->to_front);
                }
                k = 0;
            }
        }
        if (k) {
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(br, notify);
            if (notify) {
                st->notifications++;
                if (threaded)
                    rb_notify(&ev->to_front);
            }
        }
        RING_FINAL_CHECK_FOR_REQUESTS(br, more);
        if (!more && threaded && st->done < n) {
            st->waits++;
            rb_wait(&ev->to_back);
            more = 1;
        }
    } while (more && st->done < n);
    return 0;
}

/* The front thread's loop over a ring of 1 << order pages. */
void RB_FN(_front)(void *shared, unsigned order, uint64_t n, unsigned batch,
                   struct rb_events *ev, struct rb_stats *st)
{
    struct blkif_front_ring fr;

    FRONT_RING_INIT(&fr, (struct blkif_sring *)shared, RB_PAGE_SIZE << order);
    rb_front(&fr, n, batch, ev, st);
}

/* The back thread's loop. */
void RB_FN(_back)(void *shared, unsigned order, uint64_t n, unsigned batch,
                  struct rb_events *ev, struct rb_stats *st)
{
    struct blkif_back_ring br;
    struct rb_stats local = {0};

    BACK_RING_INIT(&br, (struct blkif_sring *)shared, RB_PAGE_SIZE << order);
    rb_back(&br, n, batch, ev, &local, 1);
    *st = local;
}

/*
 * Single-threaded ping-pong for callgrind: the front pushes a batch, the back
 * drains it, the front takes the responses, `n` round trips in all. Same
 * macros and policy, no waiting, so the instructions per round trip are the
 * ring's own.
 */
void RB_FN(_pingpong)(void *shared, unsigned order, uint64_t n, unsigned batch,
                      struct rb_stats *front_st, struct rb_stats *back_st)
{
    struct blkif_sring *s = shared;
    struct blkif_front_ring fr;
    struct blkif_back_ring br;
    uint64_t sent = 0, done = 0;

    SHARED_RING_INIT(s);
    FRONT_RING_INIT(&fr, s, RB_PAGE_SIZE << order);
    BACK_RING_INIT(&br, s, RB_PAGE_SIZE << order);
    memset(front_st, 0, sizeof(*front_st));
    memset(back_st, 0, sizeof(*back_st));
    while (done < n) {
        unsigned k = 0;
        RING_IDX rp, i;
        int notify, more;

        while (k < batch && sent < n && !RING_FULL(&fr)) {
            struct blkif_request req;
            rb_fill_request(&req, sent);
            *RING_GET_REQUEST(&fr, fr.req_prod_pvt) = req;
            fr.req_prod_pvt++;
            sent++;
            k++;
        }
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&fr, notify);
        front_st->notifications += notify != 0;

        if (rb_back(&br, UINT64_MAX, batch, NULL, back_st, 0))
            return;

        rp = RB_READ_ONCE(fr.sring->rsp_prod);
        xen_rmb();
        if (RING_RESPONSE_PROD_OVERFLOW(&fr, rp)) {
            front_st->errors++;
            return;
        }
        for (i = fr.rsp_cons; i != rp; i++) {
            struct blkif_response rsp;
            RING_COPY_RESPONSE(&fr, i, &rsp);
            if (rsp.id != done || rsp.status != BLKIF_RSP_OKAY)
                front_st->errors++;
            front_st->checksum += rsp.id;
            done++;
        }
        fr.rsp_cons = i;
        RING_FINAL_CHECK_FOR_RESPONSES(&fr, more);
        if (more)
            front_st->errors++; /* the back end answered everything */
    }
    front_st->done = done;
}
