//! The toolstack's control requests: `xl shutdown`, `xl reboot` and the
//! like write a word into the guest's `control/shutdown`, and wait for the
//! guest to acknowledge it by emptying the key (libxl gives up after a
//! timeout: "guest didn't acknowledge"). This is the guest's side, as Xen's
//! PV guests do it: advertise what is understood
//! (`control/feature-poweroff`, `control/feature-reboot`), watch the key,
//! and acknowledge, in one transaction with reading it, only the requests
//! this guest will carry out; any other word is left in place and reported
//! as [`ControlRequest::Unsupported`] (a toolstack then times out, as it
//! should: nothing was done).
//!
//! It shares the guest's one xenstore connection with its disks
//! ([`SharedStore`]) and takes only the events of its own watch.
//! [`Control::poll`] costs one look at the connection's queue when nothing
//! came. What to do on a request — close the disks, then
//! `SCHEDOP_shutdown` — is the application's: see
//! [`ControlRequest`].

use alloc::string::String;

use crate::blkfront::SharedStore;
use crate::error::XsErrno;
use crate::hal::XsTransport;
use crate::xenstore::XsError;

/// The key the toolstack writes requests into (relative to the domain's
/// home).
pub const SHUTDOWN_KEY: &str = "control/shutdown";
/// The watch token of [`Control`].
const TOKEN: &str = "xenblk-control";
/// Transaction retries on `EAGAIN`.
const RETRIES: u32 = 16;

/// A request of the toolstack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// `poweroff` (`xl shutdown`) or `halt`: acknowledged. Close every
    /// disk, then shut down with `SHUTDOWN_poweroff`.
    Poweroff,
    /// `reboot` (`xl reboot`): acknowledged. Close every disk, then shut
    /// down with `SHUTDOWN_reboot` (the toolstack builds the domain again).
    Reboot,
    /// Any other word (`suspend`, with no resume behind it yet, included):
    /// left unacknowledged in the key, so the toolstack sees the guest did
    /// not take it; reported again each time the key changes while it is
    /// there.
    Unsupported(String),
}

/// Watches `control/shutdown` on the guest's xenstore connection.
pub struct Control<'s, T: XsTransport> {
    store: &'s SharedStore<T>,
    /// A look at the key is due (set by the watch, and at the start).
    due: bool,
    /// The connection's count of watch events dropped from its full queue,
    /// at the last look: a rise may have dropped this watch's event.
    dropped: u64,
}

impl<T: XsTransport> core::fmt::Debug for Control<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Control").field("due", &self.due).finish()
    }
}

impl<'s, T: XsTransport> Control<'s, T> {
    /// Advertises `control/feature-poweroff` and `control/feature-reboot`
    /// (where the toolstack lets the guest write them) and watches
    /// `control/shutdown`.
    ///
    /// # Errors
    ///
    /// xenstore errors of the watch (`EEXIST` when a `Control` already
    /// watches on this connection).
    pub fn new(store: &'s SharedStore<T>) -> Result<Control<'s, T>, XsError> {
        let mut xs = store.lock();
        for f in ["control/feature-poweroff", "control/feature-reboot"] {
            // Advisory: a toolstack that made no such node writable still
            // sends requests.
            if let Err(e) = xs.write(f, "1") {
                log::debug!("control: {f} not written: {e}");
            }
        }
        xs.watch(SHUTDOWN_KEY, TOKEN)?;
        let dropped = xs.dropped_events();
        Ok(Control {
            store,
            due: true,
            dropped,
        })
    }

    /// A request, if the toolstack made one since the last call:
    /// reads `control/shutdown` (only when its watch fired) and
    /// acknowledges a request this guest carries out. Never blocks.
    ///
    /// # Errors
    ///
    /// xenstore errors; the request, if any, stays in the key and is seen
    /// when the key next changes (after transactions that kept
    /// conflicting: by the next call). A request in a key the guest may
    /// read but not write is returned all the same, unacknowledged.
    pub fn poll(&mut self) -> Result<Option<ControlRequest>, XsError> {
        let mut xs = self.store.lock();
        while xs.take_watch_event_for(TOKEN)?.is_some() {
            self.due = true;
        }
        // Other watches' events (a disk's) may have filled the queue and
        // pushed this watch's out: look then too.
        let dropped = xs.dropped_events();
        if dropped != self.dropped {
            self.dropped = dropped;
            self.due = true;
        }
        if !self.due {
            return Ok(None);
        }
        let got = xs.transaction(RETRIES, |xs, tx| {
            let word = xs.read_opt_tx(tx, SHUTDOWN_KEY)?.unwrap_or_default();
            let req = match word.as_str() {
                "" => return Ok(None),
                "poweroff" | "halt" => ControlRequest::Poweroff,
                "reboot" => ControlRequest::Reboot,
                _ => return Ok(Some(ControlRequest::Unsupported(word))),
            };
            match xs.write_tx(tx, SHUTDOWN_KEY, "") {
                Ok(()) => {}
                // A key the toolstack made read-only for the guest (or
                // recreated under `control/`, which is): carry the request
                // out anyway, as Xen's guests do; the toolstack sees the
                // domain go instead of the empty key.
                Err(XsError::Errno(XsErrno::EACCES)) => {
                    log::warn!(
                        "control: {SHUTDOWN_KEY} is read-only here; {word} not acknowledged"
                    );
                }
                Err(e) => return Err(e),
            }
            Ok(Some(req))
        });
        // Looked: not due again until the key changes, unless the look
        // only lost to conflicting transactions (a key the guest may not
        // read fails the same way every time: not worth a transaction per
        // poll).
        self.due = got == Err(XsError::RetriesExhausted);
        got
    }
}

impl<T: XsTransport> Drop for Control<'_, T> {
    /// Removes the watch (best effort: the connection may be gone).
    fn drop(&mut self) {
        let _ = self.store.lock().unwatch(SHUTDOWN_KEY, TOKEN);
    }
}
