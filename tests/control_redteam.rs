//! Red-team attacks on `xenblk::control::Control`.
#![cfg(feature = "sim")]

use xenblk::blkfront::Config;
use xenblk::control::{Control, ControlRequest};
use xenblk::hal::DomId;
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::xenstored::{Access, Perm};
use xenblk::sim::Testbed;
use xenblk::xenstore::XsError;

fn key(tb: &Testbed) -> String {
    format!("/local/domain/{}/control/shutdown", tb.domid().0)
}
fn settle(tb: &Testbed) {
    let _ = tb
        .xen()
        .wait_until(Some(tb.xen().now_ns() + 1_000_000), || false);
}
fn ts_write(tb: &Testbed, word: &str) {
    tb.xenstored()
        .write(DomId::DOM0, &key(tb), word)
        .expect("dom0 writes");
    settle(tb);
}
fn in_key(tb: &Testbed) -> Option<String> {
    tb.xenstored()
        .read_opt(DomId::DOM0, &key(tb))
        .expect("dom0 reads")
}
/// Polls a few times (with time passing), collecting every request.
fn drain(
    tb: &Testbed,
    c: &mut Control<'_, impl xenblk::hal::XsTransport>,
) -> Vec<Result<Option<ControlRequest>, XsError>> {
    let mut v = Vec::new();
    for _ in 0..8 {
        let r = c.poll();
        if r != Ok(None) {
            v.push(r);
        }
        settle(tb);
    }
    v
}

/// A burst of more than MAX_QUEUED_EVENTS (4096) events of a disk's watch
/// arriving after a shutdown request, all pumped into the shared client's
/// queue by some other xenstore request, pushes Control's event out of the
/// queue (oldest first). Control never looks at the key again: the request
/// is lost for good (the toolstack times out) although it sits in the key.
#[test]
fn a_flood_of_a_disks_events_does_not_make_control_miss_a_request() {
    let mut b = BackendConfig::blkback();
    b.hotplug_delay_ns = 0;
    let tb = Testbed::new([b]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    let mut c = Control::new(guest.store()).expect("control");
    assert_eq!(c.poll(), Ok(None));
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    ts_write(&tb, "poweroff");
    let state = format!("{}/state", tb.backend(0).backend_path());
    for _ in 0..4200 {
        tb.xenstored()
            .write(DomId::DOM0, &state, "4")
            .expect("rewrite state");
    }
    settle(&tb);
    // any xenstore request of the guest pumps everything queued before its reply
    let _ = guest.store().lock().read("domid");
    let dropped = guest.store().lock().dropped_events();
    let got = drain(&tb, &mut c);
    assert_eq!(
        in_key(&tb).as_deref(),
        Some(""),
        "never acknowledged (dropped_events={dropped}), got {got:?}"
    );
    assert_eq!(got, vec![Ok(Some(ControlRequest::Poweroff))]);
    let _ = disk.poll();
    disk.close().expect("close");
}

/// The toolstack lets the guest read `control/shutdown` but not write it:
/// the guest cannot acknowledge. Every poll then fails with EACCES (a full
/// transaction each time, watch or not) and the request is never reported,
/// so the guest never carries out a poweroff it could (Linux's
/// shutdown_handler ignores the write's failure and shuts down).
#[test]
fn a_request_the_guest_may_not_acknowledge_is_still_reported() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    ts_write(&tb, "poweroff");
    tb.xenstored()
        .set_perms(
            DomId::DOM0,
            &key(&tb),
            &[
                Perm::new(DomId::DOM0, Access::None),
                Perm::new(tb.domid(), Access::Read),
            ],
        )
        .expect("perms");
    settle(&tb);
    let got = drain(&tb, &mut c);
    assert!(
        got.iter().any(|r| r == &Ok(Some(ControlRequest::Poweroff))),
        "poweroff never reported: {got:?}"
    );
}

/// Odd values: never a panic, never an acknowledgement of a word that is
/// not exactly a supported one, one report per change.
#[test]
fn odd_values_are_unsupported_and_reported_once() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    let long = "p".repeat(3000);
    for w in [
        " poweroff",
        "poweroff\n",
        "Poweroff",
        "reboot ",
        "poweroffx",
        "halt\t",
        long.as_str(),
        "\u{e9}t\u{e9}",
        "suspend",
    ] {
        ts_write(&tb, w);
        let got = drain(&tb, &mut c);
        assert_eq!(
            got,
            vec![Ok(Some(ControlRequest::Unsupported(w.to_string())))],
            "{w:?}"
        );
        assert_eq!(in_key(&tb).as_deref(), Some(w), "{w:?} left in place");
    }
}

#[test]
fn embedded_nul_value_does_not_panic() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    let _ = c.poll();
    let r = tb.xenstored().write(DomId::DOM0, &key(&tb), "poweroff\0");
    settle(&tb);
    let got = drain(&tb, &mut c);
    eprintln!(
        "dom0 write of 'poweroff\\0': {r:?}; control saw {got:?}; key {:?}",
        in_key(&tb)
    );
}

/// The toolstack removes `control/shutdown` (or it was never created
/// writable) and later writes a request into it: xenstored recreates the
/// node with its parent's permissions (`control`: dom0's, guest read-only),
/// so the guest can read the request but not empty it. Control then fails
/// every poll with EACCES (a transaction each time, watch or not) and
/// never reports the request.
#[test]
fn a_request_written_after_the_key_was_removed_is_reported() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    tb.xenstored().rm(DomId::DOM0, &key(&tb)).unwrap();
    settle(&tb);
    assert_eq!(drain(&tb, &mut c), vec![], "removed key: nothing");
    ts_write(&tb, "reboot");
    let got = drain(&tb, &mut c);
    assert!(
        got.iter().any(|r| r == &Ok(Some(ControlRequest::Reboot))),
        "reboot never reported: {got:?}"
    );
}

/// Held: a child node written under the key, and the key removed while an
/// unsupported word was in it.
#[test]
fn children_and_removal_of_an_unsupported_word() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    ts_write(&tb, "suspend");
    assert_eq!(
        drain(&tb, &mut c),
        vec![Ok(Some(ControlRequest::Unsupported("suspend".into())))]
    );
    tb.xenstored()
        .write(DomId::DOM0, &format!("{}/x", key(&tb)), "1")
        .unwrap();
    settle(&tb);
    let again = drain(&tb, &mut c);
    eprintln!("child write re-reported: {again:?}");
    tb.xenstored().write(DomId::DOM0, &key(&tb), "").unwrap();
    settle(&tb);
    assert_eq!(drain(&tb, &mut c), vec![]);
}

/// Commits that conflict: within the retry budget the request is reported
/// and acknowledged once; beyond it an error, and the next poll gets it.
#[test]
fn conflicting_commits() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    ts_write(&tb, "poweroff");
    tb.xenstored().fail_next_commits(16);
    assert_eq!(c.poll(), Ok(Some(ControlRequest::Poweroff)));
    assert_eq!(in_key(&tb).as_deref(), Some(""));
    settle(&tb);
    assert_eq!(drain(&tb, &mut c), vec![]);
    ts_write(&tb, "reboot");
    tb.xenstored().fail_next_commits(17);
    assert_eq!(c.poll(), Err(XsError::RetriesExhausted));
    assert_eq!(in_key(&tb).as_deref(), Some("reboot"));
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Reboot))]);
    assert_eq!(in_key(&tb).as_deref(), Some(""));
}

/// A request written, then replaced before the guest polls: only the last
/// one is carried out; a request written and cleared by the toolstack before
/// the guest polls is not reported.
#[test]
fn replaced_and_withdrawn_requests() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    ts_write(&tb, "poweroff");
    ts_write(&tb, "reboot");
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Reboot))]);
    ts_write(&tb, "poweroff");
    ts_write(&tb, "");
    assert_eq!(drain(&tb, &mut c), vec![]);
    // dropped and recreated: a request present at creation is seen
    drop(c);
    ts_write(&tb, "halt");
    let mut c = Control::new(guest.store()).expect("control again");
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Poweroff))]);
}
