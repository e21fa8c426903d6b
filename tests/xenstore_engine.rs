//! The simulated xenstored's database on its own, without rings or the
//! simulated hypervisor: the request/reply protocol of `xenstore.txt`,
//! permissions, watches and transactions.
#![cfg(feature = "sim")]

use xenblk::abi::xs_wire::msg_type::*;
use xenblk::abi::xs_wire::XsdSockmsg;
use xenblk::error::XsErrno;
use xenblk::hal::DomId;
use xenblk::sim::xenstored::{Access, ConnId, Perm, Store};
use xenblk::xenstore::wire::{Message, WatchEvent};
use xenblk::xenstore::XsError;

const G: DomId = DomId(5);
const D0: DomId = DomId::DOM0;

fn req(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Message {
    Message {
        header: XsdSockmsg {
            ty,
            req_id,
            tx_id,
            len: payload.len() as u32,
        },
        payload: payload.to_vec(),
    }
}

/// Sends a request and returns (reply type, reply payload), checking that
/// the reply echoes req_id and tx_id.
fn call(s: &mut Store, c: ConnId, ty: u32, tx: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    s.handle(c, &req(ty, 77, tx, payload));
    let mut reply = None;
    while let Some(m) = s.take_output(c) {
        if m.header.ty != XS_WATCH_EVENT {
            assert!(reply.is_none(), "exactly one reply");
            reply = Some(m);
        }
    }
    let m = reply.expect("a reply");
    assert_eq!((m.header.req_id, m.header.tx_id), (77, tx));
    assert_eq!(m.header.len as usize, m.payload.len());
    (m.header.ty, m.payload)
}

fn err(e: XsErrno) -> (u32, Vec<u8>) {
    (XS_ERROR, format!("{}\0", e.name()).into_bytes())
}

fn guest() -> (Store, ConnId) {
    let mut s = Store::new();
    s.introduce_domain(G);
    let c = s.connect(G);
    (s, c)
}

#[test]
fn malformed_and_forbidden_requests_get_error_replies() {
    let (mut s, c) = guest();
    let einval = err(XsErrno::EINVAL);
    assert_eq!(call(&mut s, c, XS_READ, 0, b"domid"), einval, "no NUL");
    assert_eq!(
        call(&mut s, c, XS_READ, 0, b"a\0b\0"),
        einval,
        "two strings"
    );
    assert_eq!(call(&mut s, c, XS_READ, 0, b"\xff\0"), einval, "not UTF-8");
    assert_eq!(call(&mut s, c, XS_WRITE, 0, b"novalue"), einval);
    assert_eq!(call(&mut s, c, XS_WATCH, 0, b"path\0"), einval, "no token");
    assert_eq!(call(&mut s, c, XS_GET_DOMAIN_PATH, 0, b"x\0"), einval);
    assert_eq!(call(&mut s, c, XS_GET_DOMAIN_PATH, 0, b"65536\0"), einval);
    assert_eq!(call(&mut s, c, 99, 0, b"\0"), einval, "unknown type");
    assert_eq!(call(&mut s, c, XS_RM, 0, b"/\0"), einval, "root");
    assert_eq!(
        call(&mut s, c, XS_INTRODUCE, 0, b"7\0"),
        err(XsErrno::EACCES)
    );
    assert_eq!(
        call(&mut s, c, XS_DIRECTORY_PART, 0, b"/\0"),
        err(XsErrno::ENOSYS)
    );
    let d0 = s.connect(D0);
    assert_eq!(
        call(&mut s, d0, XS_INTRODUCE, 0, b"7\0"),
        err(XsErrno::ENOSYS)
    );
}

#[test]
fn replies_have_the_documented_payloads() {
    let (mut s, c) = guest();
    let ok = (XS_WRITE, b"OK\0".to_vec());
    assert_eq!(call(&mut s, c, XS_WRITE, 0, b"data/x\0v\0al"), ok);
    assert_eq!(s.read(D0, "/local/domain/5/data/x").unwrap(), "v\0al");
    assert_eq!(
        call(&mut s, c, XS_READ, 0, b"data/x\0"),
        (XS_READ, b"v\0al".to_vec())
    );
    call(&mut s, c, XS_WRITE, 0, b"data/y\0");
    assert_eq!(
        call(&mut s, c, XS_DIRECTORY, 0, b"data\0"),
        (XS_DIRECTORY, b"x\0y\0".to_vec())
    );
    assert_eq!(
        call(&mut s, c, XS_GET_DOMAIN_PATH, 0, b"5\0"),
        (XS_GET_DOMAIN_PATH, b"/local/domain/5\0".to_vec())
    );
    assert_eq!(
        call(&mut s, c, XS_IS_DOMAIN_INTRODUCED, 0, b"5\0").1,
        b"T\0"
    );
    assert_eq!(
        call(&mut s, c, XS_IS_DOMAIN_INTRODUCED, 0, b"6\0").1,
        b"F\0"
    );
    assert_eq!(
        call(&mut s, c, XS_GET_PERMS, 0, b"data/x\0"),
        (XS_GET_PERMS, b"n5\0".to_vec())
    );
    let (ty, id) = call(&mut s, c, XS_TRANSACTION_START, 0, b"\0");
    assert_eq!(ty, XS_TRANSACTION_START);
    let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(id, 0);
    assert_eq!(
        call(&mut s, c, XS_TRANSACTION_START, id, b"\0"),
        err(XsErrno::EBUSY)
    );
    assert_eq!(
        call(&mut s, c, XS_TRANSACTION_END, id, b"X\0"),
        err(XsErrno::EINVAL)
    );
    let other = s.connect(G);
    assert_eq!(
        call(&mut s, other, XS_READ, id, b"data/x\0"),
        err(XsErrno::ENOENT)
    );
    assert_eq!(call(&mut s, c, XS_TRANSACTION_END, id, b"F\0").1, b"OK\0");
    assert_eq!(
        call(&mut s, c, XS_TRANSACTION_END, id, b"F\0"),
        err(XsErrno::ENOENT)
    );
}

#[test]
fn a_new_watch_fires_after_its_ok() {
    let (mut s, c) = guest();
    s.handle(c, &req(XS_WATCH, 3, 0, b"data\0tok\0"));
    let first = s.take_output(c).unwrap();
    assert_eq!(
        (first.header.ty, &first.payload[..]),
        (XS_WATCH, &b"OK\0"[..])
    );
    let second = s.take_output(c).unwrap();
    assert_eq!(second.header.ty, XS_WATCH_EVENT);
    assert_eq!((second.header.req_id, second.header.tx_id), (0, 0));
    assert_eq!(second.payload, b"data\0tok\0");
    assert!(s.take_output(c).is_none());
    assert_eq!(
        call(&mut s, c, XS_WATCH, 0, b"data\0tok\0"),
        err(XsErrno::EEXIST)
    );
    assert_eq!(call(&mut s, c, XS_RESET_WATCHES, 0, b"\0").1, b"OK\0");
    assert_eq!(s.watch_count(), 0);
}

#[test]
fn in_process_watches_and_domain_lifecycle() {
    let mut s = Store::new();
    let back = s.connect(D0);
    s.watch(back, "@releaseDomain", "rel").unwrap();
    s.watch(back, "/local/domain/0/backend", "be").unwrap();
    let ev = |p: &str, t: &str| WatchEvent {
        path: p.into(),
        token: t.into(),
    };
    assert_eq!(s.poll_event(back), Some(ev("@releaseDomain", "rel")));
    assert_eq!(
        s.poll_event(back),
        Some(ev("/local/domain/0/backend", "be"))
    );
    s.write(D0, "/local/domain/0/backend/vbd/5/768/state", "2")
        .unwrap();
    s.rm(D0, "/local/domain/0/backend/vbd/5").unwrap();
    assert_eq!(
        s.poll_event(back),
        Some(ev("/local/domain/0/backend/vbd/5/768/state", "be"))
    );
    assert_eq!(
        s.poll_event(back),
        Some(ev("/local/domain/0/backend/vbd/5", "be"))
    );
    assert_eq!(s.poll_event(back), None);

    s.introduce_domain(G);
    let c = s.connect(G);
    s.watch(c, "data", "mine").unwrap();
    assert!(s.exists("/local/domain/5/data"));
    s.release_domain(G);
    assert!(!s.exists("/local/domain/5"));
    assert!(!s.is_introduced(G));
    assert_eq!(s.poll_event(back), Some(ev("@releaseDomain", "rel")));
    assert_eq!(s.watch_count(), 2, "the guest's watch went with it");
    assert_eq!(s.conn_dom(c), None);
}

#[test]
fn nodes_guests_create_are_theirs_and_inherit_the_rest() {
    let (mut s, _) = guest();
    s.set_perms(
        D0,
        "/local/domain/5/data",
        &[
            Perm::new(G, Access::None),
            Perm::new(DomId(6), Access::Read),
        ],
    )
    .unwrap();
    s.write(G, "data/a/b", "x").unwrap();
    let want = vec![
        Perm::new(G, Access::None),
        Perm::new(DomId(6), Access::Read),
    ];
    assert_eq!(s.get_perms(D0, "/local/domain/5/data/a/b").unwrap(), want);
    assert_eq!(s.read(DomId(6), "/local/domain/5/data/a/b").unwrap(), "x");
    assert_eq!(
        s.write(DomId(6), "/local/domain/5/data/a/b", "y"),
        Err(XsError::Errno(XsErrno::EACCES))
    );
    // dom0 creating below keeps the inherited owner.
    s.write(D0, "/local/domain/5/data/a/c", "z").unwrap();
    assert_eq!(s.get_perms(G, "data/a/c").unwrap()[0].dom, G);
    // Only the owner (or dom0) may change permissions; ownership can move.
    assert_eq!(
        s.set_perms(
            DomId(6),
            "/local/domain/5/data/a",
            &[Perm::new(DomId(6), Access::None)]
        ),
        Err(XsError::Errno(XsErrno::EACCES))
    );
    s.set_perms(G, "data/a", &[Perm::new(DomId(6), Access::None)])
        .unwrap();
    assert_eq!(s.read(G, "data/a"), Err(XsError::Errno(XsErrno::EACCES)));
    assert_eq!(
        s.set_perms(G, "data/b", &[]),
        Err(XsError::Errno(XsErrno::EINVAL))
    );
}

#[test]
fn directory_listings_take_part_in_conflicts() {
    let (mut s, c) = guest();
    s.write(G, "data/list/a", "1").unwrap();
    let (_, id) = call(&mut s, c, XS_TRANSACTION_START, 0, b"\0");
    let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(call(&mut s, c, XS_DIRECTORY, id, b"data/list\0").1, b"a\0");
    call(&mut s, c, XS_WRITE, id, b"data/count\x001");
    // A new sibling changes the listing the transaction depended on.
    s.write(G, "data/list/b", "2").unwrap();
    assert_eq!(
        call(&mut s, c, XS_TRANSACTION_END, id, b"T\0"),
        err(XsErrno::EAGAIN)
    );
    assert_eq!(s.read_opt(G, "data/count").unwrap(), None);

    // A value change below the listed node does not.
    let (_, id) = call(&mut s, c, XS_TRANSACTION_START, 0, b"\0");
    let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    call(&mut s, c, XS_DIRECTORY, id, b"data/list\0");
    call(&mut s, c, XS_WRITE, id, b"data/count\x002");
    s.write(G, "data/list/a", "changed").unwrap();
    assert_eq!(call(&mut s, c, XS_TRANSACTION_END, id, b"T\0").1, b"OK\0");
    assert_eq!(s.read(G, "data/count").unwrap(), "2");

    // Forced failures, then a clean commit.
    s.fail_next_commits(1);
    let (_, id) = call(&mut s, c, XS_TRANSACTION_START, 0, b"\0");
    let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        call(&mut s, c, XS_TRANSACTION_END, id, b"T\0"),
        err(XsErrno::EAGAIN)
    );
    assert_eq!(s.transaction_count(), 0);
}

#[test]
fn removing_a_transactions_subtree_in_it_and_committing() {
    let (mut s, c) = guest();
    s.write(G, "data/t/x/y", "1").unwrap();
    let watcher = s.connect(D0);
    s.watch(watcher, "/local/domain/5/data/t/x/y", "deep")
        .unwrap();
    s.poll_event(watcher);
    let (_, id) = call(&mut s, c, XS_TRANSACTION_START, 0, b"\0");
    let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    call(&mut s, c, XS_RM, id, b"data/t\0");
    assert!(s.exists("/local/domain/5/data/t/x/y"), "not before commit");
    assert_eq!(s.poll_event(watcher), None);
    assert_eq!(call(&mut s, c, XS_TRANSACTION_END, id, b"T\0").1, b"OK\0");
    assert!(!s.exists("/local/domain/5/data/t"));
    let e = s.poll_event(watcher).unwrap();
    assert_eq!(
        (e.path.as_str(), e.token.as_str()),
        ("/local/domain/5/data/t/x/y", "deep")
    );
}
