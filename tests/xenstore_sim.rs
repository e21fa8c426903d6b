//! End to end: the xenstore client over the real ring page, served by the
//! simulated xenstored through simulated event channels. Every operation,
//! watches, transaction conflicts, permissions and fault hooks.
#![cfg(feature = "sim")]

use xenblk::error::{XsErrno, XsMalformed};
use xenblk::hal::{DomId, Hal};
use xenblk::sim::xenstored::{Access, Perm, SimXsTransport, XenStored};
use xenblk::sim::{SimHal, SimXen};
use xenblk::xenstore::{TxId, WatchEvent, XenStore, XsError};

const G1: DomId = DomId(1);
const G2: DomId = DomId(2);
const D0: DomId = DomId::DOM0;

fn eacces() -> XsError {
    XsError::Errno(XsErrno::EACCES)
}

fn enoent() -> XsError {
    XsError::Errno(XsErrno::ENOENT)
}

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

type Xs<'h> = XenStore<SimXsTransport<'h>>;

fn client<'h>(xsd: &XenStored, hal: &'h SimHal) -> Xs<'h> {
    let mut xs = XenStore::new(xsd.connect(hal).unwrap());
    xs.set_timeout_ns(1_000_000_000);
    xs
}

fn drain(xs: &mut Xs<'_>) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Some(e) = xs.poll_watch_event().unwrap() {
        out.push(e);
    }
    out
}

#[test]
fn every_operation_over_the_ring() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);

    assert_eq!(xs.get_domain_path(G1).unwrap(), "/local/domain/1");
    assert_eq!(xs.get_domain_path(DomId(42)).unwrap(), "/local/domain/42");
    assert_eq!(xs.read("domid").unwrap(), "1");
    assert_eq!(xs.read("/local/domain/1/name").unwrap(), "guest1");

    xs.write("data/a/b", "hello").unwrap();
    assert_eq!(xs.read("data/a/b").unwrap(), "hello");
    assert_eq!(
        xs.read("/local/domain/1/data/a").unwrap(),
        "",
        "parents made empty"
    );
    xs.mkdir("data/a/c").unwrap();
    xs.mkdir("data/a/c").unwrap();
    let mut names = xs.directory("data/a").unwrap();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(xs.directory("data/a/b").unwrap(), Vec::<String>::new());
    assert_eq!(xs.read_opt("data/nope").unwrap(), None);
    assert_eq!(xs.read("data/nope"), Err(enoent()));

    xs.rm("data/a").unwrap();
    assert_eq!(xs.read_opt("data/a/b").unwrap(), None);
    xs.rm("data/a").unwrap();
    assert_eq!(xs.rm("data/x/y"), Err(enoent()), "parent missing too");

    assert_eq!(xs.get_perms("data").unwrap(), ["n1"]);
    xs.write("data/shared", "x").unwrap();
    xs.set_perms("data/shared", &["n1", "r2"]).unwrap();
    assert_eq!(xs.get_perms("data/shared").unwrap(), ["n1", "r2"]);

    // Values close to the payload limit cross the 1024-byte ring many times.
    let big: String = (0..4000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    xs.write("data/big", &big).unwrap();
    assert_eq!(xs.read("data/big").unwrap(), big);
    assert_eq!(xsd.read(D0, "/local/domain/1/data/big").unwrap(), big);

    assert_eq!(xs.read("/bad//path"), Err(XsError::Errno(XsErrno::EINVAL)));
    assert!(!xs.is_broken());
}

#[test]
fn watches_fire_on_registration_changes_and_ancestor_removal() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);

    xs.write("data/dev/state", "1").unwrap();
    xs.watch("data/dev", "rel").unwrap();
    xs.watch("/local/domain/1/data/dev/state", "abs").unwrap();
    assert_eq!(
        drain(&mut xs),
        [
            ev("data/dev", "rel"),
            ev("/local/domain/1/data/dev/state", "abs")
        ]
    );
    assert_eq!(
        xs.watch("data/dev", "rel"),
        Err(XsError::Errno(XsErrno::EEXIST))
    );

    xs.write("data/dev/state", "2").unwrap();
    xs.write("data/dev/other", "x").unwrap();
    xs.write("data/unrelated", "x").unwrap();
    assert_eq!(
        drain(&mut xs),
        [
            ev("data/dev/state", "rel"),
            ev("/local/domain/1/data/dev/state", "abs"),
            ev("data/dev/other", "rel"),
        ]
    );

    // A change by dom0 (a backend) reaches the guest.
    xsd.write(D0, "/local/domain/1/data/dev/state", "4")
        .unwrap();
    let e = xs
        .wait_watch_event_for("abs", xen.now_ns() + 1_000_000)
        .unwrap();
    assert_eq!(e, ev("/local/domain/1/data/dev/state", "abs"));
    assert_eq!(drain(&mut xs), [ev("data/dev/state", "rel")]);

    // Removing an ancestor fires watches below it with their own path.
    xs.rm("data/dev").unwrap();
    let mut got = drain(&mut xs);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [
            ev("/local/domain/1/data/dev/state", "abs"),
            ev("data/dev", "rel")
        ]
    );

    xs.unwatch("data/dev", "rel").unwrap();
    assert_eq!(xs.unwatch("data/dev", "rel"), Err(enoent()));
    xs.write("data/dev/state", "5").unwrap();
    assert_eq!(
        drain(&mut xs),
        [ev("/local/domain/1/data/dev/state", "abs")]
    );
    assert_eq!(xsd.store().watch_count(), 1);
}

#[test]
fn watches_respect_permissions_and_special_paths() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let (h1, h2) = (xen.hal(G1), xen.hal(G2));
    let mut a = client(&xsd, &h1);
    let mut b = client(&xsd, &h2);

    b.watch("/local/domain/1/data", "spy").unwrap();
    b.watch("@introduceDomain", "intro").unwrap();
    assert_eq!(drain(&mut b).len(), 2, "initial events always fire");
    a.write("data/secret", "x").unwrap();
    a.write("data/public", "y").unwrap();
    a.set_perms("data/public", &["n1", "r2"]).unwrap();
    a.write("data/public", "z").unwrap();
    // Only changes to the node domain 2 may read are reported to it.
    assert_eq!(
        drain(&mut b),
        [
            ev("/local/domain/1/data/public", "spy"),
            ev("/local/domain/1/data/public", "spy"),
        ]
    );

    let h3 = xen.hal(DomId(3));
    let _c = client(&xsd, &h3);
    // Step mode: the daemon runs while someone waits.
    let e = b.wait_watch_event(xen.now_ns() + 1_000_000).unwrap();
    assert_eq!(e, ev("@introduceDomain", "intro"));
    assert_eq!(drain(&mut b), []);
}

#[test]
fn guests_see_only_what_permissions_allow() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let (h1, h2) = (xen.hal(G1), xen.hal(G2));
    let mut a = client(&xsd, &h1);
    let mut b = client(&xsd, &h2);

    // dom0's tree and other guests' homes are private.
    xsd.write(D0, "/local/domain/0/backend/vbd/1/768/state", "1")
        .unwrap();
    assert_eq!(
        a.read("/local/domain/0/backend/vbd/1/768/state"),
        Err(eacces())
    );
    assert_eq!(a.directory("/local/domain/0"), Err(eacces()));
    assert_eq!(a.read("/local/domain/2/domid"), Err(eacces()));
    // Probing a missing node below an unreadable one says EACCES, not ENOENT.
    assert_eq!(a.read("/local/domain/2/nothing/here"), Err(eacces()));
    assert_eq!(a.read("/tool/nothing"), Err(eacces()));
    // The home itself is read-only to the guest; `data` is its own.
    assert_eq!(a.write("newkey", "x"), Err(eacces()));
    assert_eq!(a.write("domid", "7"), Err(eacces()));
    a.write("data/mine", "x").unwrap();
    assert_eq!(a.get_perms("data/mine").unwrap(), ["n1"]);
    assert_eq!(
        b.set_perms("/local/domain/1/data/mine", &["n2"]),
        Err(eacces())
    );

    // The toolstack's frontend/backend layout: the frontend dir is owned by
    // the guest and readable by the backend domain; the backend dir is
    // owned by the backend and readable by the guest.
    let fe = "/local/domain/1/device/vbd/768";
    let be = "/local/domain/0/backend/vbd/1/768";
    xsd.write(D0, &format!("{fe}/state"), "1").unwrap();
    xsd.set_perms(
        D0,
        fe,
        &[Perm::new(G1, Access::None), Perm::new(D0, Access::Read)],
    )
    .unwrap();
    xsd.set_perms(D0, &format!("{fe}/state"), &[Perm::new(G1, Access::None)])
        .unwrap();
    xsd.set_perms(
        D0,
        be,
        &[Perm::new(D0, Access::None), Perm::new(G1, Access::Read)],
    )
    .unwrap();
    xsd.set_perms(
        D0,
        &format!("{be}/state"),
        &[Perm::new(D0, Access::None), Perm::new(G1, Access::Read)],
    )
    .unwrap();
    assert_eq!(a.read(&format!("{be}/state")).unwrap(), "1");
    assert_eq!(a.write(&format!("{be}/state"), "6"), Err(eacces()));
    a.write("device/vbd/768/ring-ref", "8").unwrap();
    a.write("device/vbd/768/state", "3").unwrap();
    assert_eq!(xsd.read(D0, &format!("{fe}/ring-ref")).unwrap(), "8");
    assert_eq!(b.read(&format!("{fe}/ring-ref")), Err(eacces()));
    let mut keys = a.directory("device/vbd/768").unwrap();
    keys.sort();
    assert_eq!(keys, ["ring-ref", "state"]);
}

#[test]
fn transactions_commit_atomically_and_conflict_with_eagain() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);
    xs.write("data/k", "0").unwrap();
    xs.watch("data", "w").unwrap();
    drain(&mut xs);

    // Snapshot: writes are invisible outside until commit; events at commit.
    let tx = xs.transaction_start().unwrap();
    assert_eq!(xs.read_tx(tx, "data/k").unwrap(), "0");
    xs.write_tx(tx, "data/k", "1").unwrap();
    xs.mkdir_tx(tx, "data/dir").unwrap();
    assert_eq!(xs.read("data/k").unwrap(), "0");
    assert_eq!(xs.directory_tx(tx, "data").unwrap().len(), 2);
    assert_eq!(drain(&mut xs), []);
    xs.transaction_end(tx, true).unwrap();
    assert_eq!(xs.read("data/k").unwrap(), "1");
    assert_eq!(drain(&mut xs), [ev("data/k", "w"), ev("data/dir", "w")]);

    // Aborted: nothing happens.
    let tx = xs.transaction_start().unwrap();
    xs.rm_tx(tx, "data/k").unwrap();
    assert_eq!(xs.read_opt_tx(tx, "data/k").unwrap(), None);
    xs.transaction_end(tx, false).unwrap();
    assert_eq!(xs.read("data/k").unwrap(), "1");

    // A conflicting write by someone else between read and commit.
    let tx = xs.transaction_start().unwrap();
    let v = xs.read_tx(tx, "data/k").unwrap();
    xsd.write(D0, "/local/domain/1/data/k", "99").unwrap();
    xs.write_tx(tx, "data/k", &format!("{v}+1")).unwrap();
    assert_eq!(
        xs.transaction_end(tx, true),
        Err(XsError::Errno(XsErrno::EAGAIN))
    );
    assert_eq!(xs.read("data/k").unwrap(), "99");

    // Someone creating a node the transaction found absent also conflicts.
    let tx = xs.transaction_start().unwrap();
    assert_eq!(xs.read_opt_tx(tx, "data/new").unwrap(), None);
    xs.write("data/new", "x").unwrap();
    xs.write_tx(tx, "data/other", "y").unwrap();
    assert_eq!(
        xs.transaction_end(tx, true),
        Err(XsError::Errno(XsErrno::EAGAIN))
    );

    // Changes to nodes the transaction never touched do not.
    let tx = xs.transaction_start().unwrap();
    xs.write_tx(tx, "data/k", "100").unwrap();
    xsd.write(D0, "/local/domain/1/data/elsewhere/x", "z")
        .unwrap();
    xs.transaction_end(tx, true).unwrap();
    assert_eq!(xs.read("data/k").unwrap(), "100");

    // Unknown or foreign transaction ids.
    assert_eq!(xs.read_tx(TxId(12345), "data/k"), Err(enoent()));
    assert_eq!(xsd.store().transaction_count(), 0);
}

#[test]
fn the_transaction_helper_retries_real_conflicts() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);
    xs.write("data/counter", "0").unwrap();

    let mut runs = 0;
    let out = xs
        .transaction(5, |xs, tx| {
            runs += 1;
            let n: u32 = xs.read_tx(tx, "data/counter")?.parse().unwrap();
            if runs < 3 {
                // Another writer sneaks in before our commit.
                xsd.write(D0, "/local/domain/1/data/counter", &(n + 10).to_string())?;
            }
            xs.write_tx(tx, "data/counter", &(n + 1).to_string())?;
            Ok::<_, XsError>(n + 1)
        })
        .unwrap();
    assert_eq!((runs, out), (3, 21));
    assert_eq!(xs.read("data/counter").unwrap(), "21");

    xsd.fail_next_commits(2);
    let mut runs = 0;
    xs.transaction(2, |xs, tx| {
        runs += 1;
        xs.write_tx(tx, "data/forced", "1")
    })
    .unwrap();
    assert_eq!(runs, 3);

    xsd.fail_next_commits(3);
    let r = xs.transaction(2, |xs, tx| xs.write_tx(tx, "data/never", "1"));
    assert_eq!(r, Err(XsError::RetriesExhausted));
    assert_eq!(xs.read_opt("data/never").unwrap(), None);
    assert_eq!(xsd.store().transaction_count(), 0);
}

#[test]
fn garbage_replies_break_only_that_connection() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let (h1, h2) = (xen.hal(G1), xen.hal(G2));
    let mut a = client(&xsd, &h1);
    let mut b = client(&xsd, &h2);
    let mut oversize = Vec::new();
    for w in [2u32, 1, 0, 5000] {
        oversize.extend(w.to_ne_bytes());
    }
    assert!(xsd.reply_garbage(G1, oversize));
    assert_eq!(
        a.read("domid"),
        Err(XsError::Malformed(XsMalformed::Oversize))
    );
    assert_eq!(a.read("domid"), Err(XsError::Connection));
    assert_eq!(b.read("domid").unwrap(), "2");

    // A stray reply with an id nobody asked for.
    let mut c = client(&xsd, &h1);
    let stray = xenblk::xenstore::wire::encode(2, 999, 0, &[b"x"]).unwrap();
    assert!(xsd.inject_raw(G1, &stray));
    assert_eq!(
        c.read("domid"),
        Err(XsError::Malformed(XsMalformed::UnexpectedId))
    );
}

#[test]
fn dropped_connections_and_broken_indices_are_connection_errors() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);
    xs.watch("data", "w").unwrap();
    assert!(xsd.drop_connection(G1));
    assert_eq!(xs.read("domid"), Err(XsError::Connection));
    assert_eq!(xsd.store().watch_count(), 0, "its watches are gone");

    let mut xs = client(&xsd, &hal);
    assert_eq!(xs.read("domid").unwrap(), "1");
    assert!(xsd.corrupt_indices(G1));
    assert_eq!(xs.read("domid"), Err(XsError::Connection));
}

#[test]
fn a_daemon_that_went_away_times_out() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = client(&xsd, &hal);
    assert_eq!(xs.read("domid").unwrap(), "1");
    xen.remove_device(xsd.device_id());
    xs.set_timeout_ns(5_000_000);
    let t0 = xen.now_ns();
    assert_eq!(xs.read("domid"), Err(XsError::Timeout));
    assert!(xen.now_ns() >= t0 + 5_000_000);
}

#[test]
fn an_oversize_request_kills_the_connection() {
    use xenblk::hal::XsTransport;
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut raw = xsd.connect(&hal).unwrap();
    let mut header = Vec::new();
    for w in [2u32, 1, 0, 4097] {
        header.extend(w.to_ne_bytes());
    }
    assert_eq!(raw.send(&header).unwrap(), 16);
    let _ = raw.wait(Some(xen.now_ns() + 1_000_000));
    assert_eq!(raw.recv(&mut [0; 16]), Err(XsError::Connection));
}

#[test]
fn works_in_threaded_mode() {
    let xen = SimXen::new_threaded();
    let xsd = XenStored::new(&xen);
    let hal = xen.hal(G1);
    let mut xs = XenStore::new(xsd.connect(&hal).unwrap());
    xs.set_timeout_ns(10_000_000_000);
    xs.watch("data", "w").unwrap();
    assert_eq!(
        xs.wait_watch_event(hal.now_ns() + 10_000_000_000).unwrap(),
        ev("data", "w")
    );
    for i in 0..50 {
        xs.write(&format!("data/k{i}"), &i.to_string()).unwrap();
    }
    assert_eq!(xs.directory("data").unwrap().len(), 50);
    xsd.write(D0, "/local/domain/1/data/k7", "x").unwrap();
    let deadline = hal.now_ns() + 10_000_000_000;
    let mut seen = 0;
    while seen < 51 {
        let e = xs.wait_watch_event(deadline).unwrap();
        assert_eq!(e.token, "w");
        seen += 1;
    }
    xen.stop_threads();
}

#[test]
fn the_page_and_ports_go_back_when_both_ends_are_gone() {
    let xen = SimXen::new();
    let hal = xen.hal(G1);
    {
        let xsd = XenStored::new(&xen);
        let mut xs = client(&xsd, &hal);
        assert_eq!(xs.read("domid").unwrap(), "1");
        assert_eq!(xen.accounting(G1).pages, 1);
        drop(xsd);
        // The guest's transport still holds its page.
        assert_eq!(xen.accounting(G1).pages, 1);
        xs.set_timeout_ns(1_000_000);
        assert_eq!(xs.read("domid"), Err(XsError::Timeout), "nobody serves it");
    }
    let left = xen.accounting(G1);
    assert_eq!((left.pages, left.ports_open), (0, 0));
}
