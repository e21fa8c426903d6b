//! `xenblk::control` against the simulated xenstored: the toolstack's
//! words in `control/shutdown`, acknowledged (emptied) only when the guest
//! carries them out, on the connection the disks share.
#![cfg(feature = "sim")]

use xenblk::blkfront::Config;
use xenblk::control::{Control, ControlRequest};
use xenblk::hal::DomId;
use xenblk::sim::blkback::BackendConfig;
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
