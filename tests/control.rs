//! `xenblk::control` against the simulated xenstored: the toolstack's
//! words in `control/shutdown`, acknowledged (emptied) only when the guest
//! carries them out, on the connection the disks share.
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

/// What the toolstack does: `xl shutdown` writes `poweroff`.
fn toolstack_writes(tb: &Testbed, word: &str) {
    tb.xenstored()
        .write(DomId::DOM0, &key(tb), word)
        .expect("dom0 writes");
    settle(tb);
}

/// Lets simulated time pass (a millisecond), so that xenstored delivers
/// what it queued: a guest's I/O waits do the same.
fn settle(tb: &Testbed) {
    let _ = tb
        .xen()
        .wait_until(Some(tb.xen().now_ns() + 1_000_000), || false);
}

/// The key's value, `None` when it is gone.
fn in_key_opt(tb: &Testbed) -> Option<String> {
    tb.xenstored()
        .read_opt(DomId::DOM0, &key(tb))
        .expect("dom0 reads")
}

fn in_key(tb: &Testbed) -> String {
    tb.xenstored()
        .read(DomId::DOM0, &key(tb))
        .expect("dom0 reads")
}

#[test]
fn each_request_is_seen_once_and_acknowledged_by_emptying_the_key() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    assert_eq!(c.poll(), Ok(None), "nothing asked yet");
    for (word, want) in [
        ("poweroff", ControlRequest::Poweroff),
        ("halt", ControlRequest::Poweroff),
        ("reboot", ControlRequest::Reboot),
    ] {
        toolstack_writes(&tb, word);
        assert_eq!(c.poll(), Ok(Some(want)), "{word}");
        assert_eq!(in_key(&tb), "", "{word} acknowledged");
        settle(&tb);
        assert_eq!(c.poll(), Ok(None), "{word} seen once");
    }
    let home = format!("/local/domain/{}", tb.domid().0);
    for f in ["feature-poweroff", "feature-reboot"] {
        assert_eq!(
            tb.xenstored()
                .read(DomId::DOM0, &format!("{home}/control/{f}")),
            Ok("1".to_string()),
            "{f} advertised"
        );
    }
}

#[test]
fn a_request_the_guest_cannot_carry_out_is_reported_and_left_unacknowledged() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    toolstack_writes(&tb, "suspend");
    assert_eq!(
        c.poll(),
        Ok(Some(ControlRequest::Unsupported("suspend".to_string())))
    );
    assert_eq!(in_key(&tb), "suspend", "not acknowledged");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None), "reported once per change");
    // the toolstack gives up and clears it; then asks for what works
    toolstack_writes(&tb, "");
    assert_eq!(c.poll(), Ok(None));
    toolstack_writes(&tb, "poweroff");
    assert_eq!(c.poll(), Ok(Some(ControlRequest::Poweroff)));
}

#[test]
fn control_and_a_disk_share_the_connection_without_taking_each_others_events() {
    let mut b = BackendConfig::blkback();
    b.hotplug_delay_ns = 0;
    let tb = Testbed::new([b]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    let mut c = Control::new(guest.store()).expect("control");
    assert_eq!(c.poll(), Ok(None));
    // the backend's size changes: the disk's watch sees it after the
    // control watch was polled
    tb.backend(0).set_size_bytes(16 << 20).expect("resize");
    assert_eq!(c.poll(), Ok(None), "a disk's event is not a request");
    let ev = disk.check_backend().expect("check");
    assert!(format!("{ev:?}").contains("Resized"), "{ev:?}");
    toolstack_writes(&tb, "poweroff");
    let mut buf = vec![0u8; 4096];
    disk.read(0, &mut buf).expect("I/O goes on");
    assert_eq!(c.poll(), Ok(Some(ControlRequest::Poweroff)));
    disk.close().expect("close");
}

#[test]
fn a_second_control_on_one_connection_is_refused() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let _c = Control::new(guest.store()).expect("control");
    let second = Control::new(guest.store());
    assert!(
        matches!(second, Err(XsError::Errno(_))),
        "{:?}",
        second.map(|_| ())
    );
}

// ----- from the red team: values, permissions, floods, conflicts ----------

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
/// queue (oldest first). Control sees the connection's dropped-event count
/// rise and looks at the key anyway: the request is not lost.
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
    toolstack_writes(&tb, "poweroff");
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
        in_key_opt(&tb).as_deref(),
        Some(""),
        "never acknowledged (dropped_events={dropped}), got {got:?}"
    );
    assert_eq!(got, vec![Ok(Some(ControlRequest::Poweroff))]);
    let _ = disk.poll();
    disk.close().expect("close");
}

/// The toolstack lets the guest read `control/shutdown` but not write it:
/// the guest cannot acknowledge, and reports the request all the same (as
/// Linux's shutdown_handler does), once, without a failing transaction on
/// every poll.
#[test]
fn a_request_the_guest_may_not_acknowledge_is_still_reported() {
    let tb = Testbed::new([]);
    let guest = tb.guest();
    let mut c = Control::new(guest.store()).expect("control");
    settle(&tb);
    assert_eq!(c.poll(), Ok(None));
    toolstack_writes(&tb, "poweroff");
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
        toolstack_writes(&tb, w);
        let got = drain(&tb, &mut c);
        assert_eq!(
            got,
            vec![Ok(Some(ControlRequest::Unsupported(w.to_string())))],
            "{w:?}"
        );
        assert_eq!(in_key_opt(&tb).as_deref(), Some(w), "{w:?} left in place");
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
        in_key_opt(&tb)
    );
}

/// The toolstack removes `control/shutdown` (or it was never created
/// writable) and later writes a request into it: xenstored recreates the
/// node with its parent's permissions (`control`: dom0's, guest read-only),
/// so the guest can read the request but not empty it; it is reported all
/// the same.
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
    toolstack_writes(&tb, "reboot");
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
    toolstack_writes(&tb, "suspend");
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
    toolstack_writes(&tb, "poweroff");
    tb.xenstored().fail_next_commits(16);
    assert_eq!(c.poll(), Ok(Some(ControlRequest::Poweroff)));
    assert_eq!(in_key_opt(&tb).as_deref(), Some(""));
    settle(&tb);
    assert_eq!(drain(&tb, &mut c), vec![]);
    toolstack_writes(&tb, "reboot");
    tb.xenstored().fail_next_commits(17);
    assert_eq!(c.poll(), Err(XsError::RetriesExhausted));
    assert_eq!(in_key_opt(&tb).as_deref(), Some("reboot"));
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Reboot))]);
    assert_eq!(in_key_opt(&tb).as_deref(), Some(""));
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
    toolstack_writes(&tb, "poweroff");
    toolstack_writes(&tb, "reboot");
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Reboot))]);
    toolstack_writes(&tb, "poweroff");
    toolstack_writes(&tb, "");
    assert_eq!(drain(&tb, &mut c), vec![]);
    // dropped and recreated: a request present at creation is seen
    drop(c);
    toolstack_writes(&tb, "halt");
    let mut c = Control::new(guest.store()).expect("control again");
    assert_eq!(drain(&tb, &mut c), vec![Ok(Some(ControlRequest::Poweroff))]);
}
