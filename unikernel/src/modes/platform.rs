//! `platform`: checks `xenblk::pvh::Xen` against the real hypervisor, one
//! `xenblk-check <name>: ok|FAILED <detail>` line per check.
//!
//! What only real Xen can show: that the grant table mapped over our frames
//! is Xen's (the toolstack's seeded xenstore entry is visible in it), that
//! `xenblk::gnttab` drives it, that pages from `Hal::alloc_pages` are what
//! `Pages` promises, that a loopback event channel delivers a notification
//! through the pending bitmap and wakes `SCHEDOP_poll`, that a wait with a
//! deadline ends at the deadline (on the same clock as `now_ns`), that
//! `now_ns` never goes back, and that the xenstore page is handed out once.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use xenblk::abi::grant::{GTF_permit_access, GTF_type_mask, GNTTAB_RESERVED_XENSTORE};
use xenblk::gnttab::GrantTable;
use xenblk::hal::{DomId, Hal, HalError, PAGE_SIZE};
use xenblk::pvh::Xen;
use xenblk::xenstore::XsError;

use super::{Context, Outcome};

/// One check: a detail line on success, what went wrong on failure.
type Check = fn(&'static Xen) -> Result<String, String>;

/// Runs every check.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let xen = ctx.xen;
    let mut outcome = Outcome::default();
    let checks: [(&str, Check); 7] = [
        ("grant-table-is-xens", grant_table_is_xens),
        ("gnttab-grant-and-revoke", gnttab_grant_and_revoke),
        ("alloc-pages", alloc_pages),
        ("evtchn-loopback", evtchn_loopback),
        ("evtchn-wait-deadline", evtchn_wait_deadline),
        ("now-ns-monotonic", now_ns_monotonic),
        ("xenstore-taken-once", xenstore_taken_once),
    ];
    for (name, check) in checks {
        match check(xen) {
            Ok(detail) => {
                crate::out!("xenblk-check {name}: ok {detail}");
                outcome.check(true);
            }
            Err(detail) => {
                crate::out!("xenblk-check {name}: FAILED {detail}");
                outcome.check(false);
            }
        }
    }
    outcome
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// The toolstack seeds entry 1 with the xenstore page for dom0
/// (`GNTTAB_RESERVED_XENSTORE`): seeing it proves the frames are Xen's.
fn grant_table_is_xens(xen: &'static Xen) -> Result<String, String> {
    let table = xen.grant_table();
    let frames = xen.grant_frames() as usize;
    ensure(table.len() == frames * PAGE_SIZE / 8, || {
        format!("{} entries for {frames} frames", table.len())
    })?;
    let (store, _) = xen.xenstore_interface().map_err(|e| format!("{e}"))?;
    let e = &table[GNTTAB_RESERVED_XENSTORE as usize];
    let (flags, domid, frame) = (
        e.flags.load(Ordering::Acquire),
        e.domid.load(Ordering::Relaxed),
        e.frame.load(Ordering::Relaxed),
    );
    let want = store.as_ptr() as u64 >> 12;
    ensure(
        flags & GTF_type_mask == GTF_permit_access && domid == 0 && u64::from(frame) == want,
        || {
            format!("entry 1: flags={flags:#x} domid={domid} frame={frame:#x}, want xenstore frame {want:#x}")
        },
    )?;
    Ok(format!(
        "frames={frames} entries={} xenstore-gfn={want:#x}",
        table.len()
    ))
}

fn gnttab_grant_and_revoke(xen: &'static Xen) -> Result<String, String> {
    let gt = GrantTable::new(xen).map_err(|e| format!("GrantTable::new: {e}"))?;
    let page = xen
        .alloc_pages(1)
        .map_err(|e| format!("alloc_pages: {e}"))?;
    let gref = gt
        .grant_access(DomId::DOM0, page.gfn(), false)
        .map_err(|e| format!("grant_access: {e}"))?;
    let e = &xen.grant_table()[gref.0 as usize];
    let seen = (
        e.flags.load(Ordering::Acquire),
        e.domid.load(Ordering::Relaxed),
        u64::from(e.frame.load(Ordering::Relaxed)),
    );
    let revoked = gt.end_access_and_free(gref);
    let after = e.flags.load(Ordering::Acquire);
    // SAFETY: the page came from `alloc_pages` and its grant was revoked.
    unsafe { xen.free_pages(page) };
    let gfn = xenblk::hal::Gfn(seen.2);
    ensure(seen.0 == GTF_permit_access && seen.1 == 0, || {
        format!("entry {}: flags={:#x} domid={}", gref.0, seen.0, seen.1)
    })?;
    revoked.map_err(|e| format!("end_access_and_free: {e}"))?;
    ensure(after == 0, || format!("flags after revoke {after:#x}"))?;
    Ok(format!("ref={} gfn={:#x}", gref.0, gfn.0))
}

fn alloc_pages(xen: &'static Xen) -> Result<String, String> {
    let pages = xen.alloc_pages(3).map_err(|e| format!("{e}"))?;
    let addr = pages.as_ptr() as u64;
    // SAFETY: `pages` is 3 readable pages owned by us.
    let zeroed = unsafe { core::slice::from_raw_parts(pages.as_ptr(), pages.len()) }
        .iter()
        .all(|&b| b == 0);
    let ok = addr % PAGE_SIZE as u64 == 0
        && pages.gfn().0 == addr >> 12
        && pages.page_gfn(2).map(|g| g.0) == Some((addr >> 12) + 2)
        && xen.gfn_of(pages.as_ptr()) == Some(pages.gfn())
        && zeroed;
    let detail = format!("addr={addr:#x} gfn={:#x} zeroed={zeroed}", pages.gfn().0);
    // SAFETY: never shared.
    unsafe { xen.free_pages(pages) };
    ensure(ok, || detail.clone())?;
    Ok(detail)
}

/// alloc_unbound(SELF) + bind_interdomain(SELF): a notification on one end
/// must show as pending on the other and wake a poll at once.
fn evtchn_loopback(xen: &'static Xen) -> Result<String, String> {
    let a = xen
        .evtchn_alloc_unbound(DomId::SELF)
        .map_err(|e| format!("alloc_unbound: {e}"))?;
    let b = xen
        .evtchn_bind_interdomain(DomId::SELF, a)
        .map_err(|e| format!("bind_interdomain: {e}"))?;
    // Xen marks the new local end pending at bind time (notifications to
    // the unbound port may have been lost): clear that one first.
    let at_bind = xen.evtchn_consume(b);
    let before = xen.evtchn_consume(b);
    let sent = xen.evtchn_notify(a);
    let t0 = xen.now_ns();
    let waited = xen.evtchn_wait(&[b], Some(t0 + 5_000_000_000));
    let took = xen.now_ns() - t0;
    let first = xen.evtchn_consume(b);
    let second = xen.evtchn_consume(b);
    let closed = (xen.evtchn_close(a), xen.evtchn_close(b));
    let again = xen.evtchn_close(a);
    let detail = format!(
        "ports={}<->{} pending-at-bind={at_bind} pending-before={before} notify={sent:?} wait={waited:?} in {took} ns, \
         consume={first}/{second}, close={closed:?}, reclose={again:?}",
        a.0, b.0
    );
    ensure(
        !before
            && sent.is_ok()
            && waited.is_ok()
            && first
            && !second
            && closed == (Ok(()), Ok(()))
            && again.is_err(),
        || detail.clone(),
    )?;
    Ok(detail)
}

/// A wait with nothing pending ends with Timeout, not before the deadline.
fn evtchn_wait_deadline(xen: &'static Xen) -> Result<String, String> {
    let a = xen
        .evtchn_alloc_unbound(DomId::DOM0)
        .map_err(|e| format!("alloc_unbound: {e}"))?;
    let t0 = xen.now_ns();
    let deadline = t0 + 20_000_000;
    let mut rounds = 0;
    let result = loop {
        rounds += 1;
        match xen.evtchn_wait(&[a], Some(deadline)) {
            Ok(()) if rounds < 1000 => continue, // early returns are allowed
            other => break other,
        }
    };
    let end = xen.now_ns();
    let _ = xen.evtchn_close(a);
    let detail = format!(
        "result={result:?} after {} ns in {rounds} poll(s)",
        end - t0
    );
    ensure(result == Err(HalError::Timeout) && end >= deadline, || {
        detail.clone()
    })?;
    Ok(detail)
}

fn now_ns_monotonic(xen: &'static Xen) -> Result<String, String> {
    let first = xen.now_ns();
    let mut last = first;
    for i in 0..10_000 {
        let t = xen.now_ns();
        ensure(t >= last, || format!("read {i}: {t} < {last}"))?;
        last = t;
    }
    Ok(format!("system time {first} .. {last} ns"))
}

/// `take_xenstore` hands out the one connection, which then answers, and
/// refuses a second.
fn xenstore_taken_once(xen: &'static Xen) -> Result<String, String> {
    let mut xs = xen
        .take_xenstore()
        .map_err(|e| format!("first take: {e}"))?;
    let name = xs.read("name").map_err(|e| format!("read name: {e}"))?;
    let second = xen.take_xenstore().map(drop);
    ensure(second == Err(XsError::Connection), || {
        format!("second take: {second:?}")
    })?;
    Ok(format!("name={name}"))
}
