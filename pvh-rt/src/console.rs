//! Output: every line goes to I/O port `0xe9` (Xen shows it in its serial
//! log as `(dN) text`; plain QEMU's `-debugcon` prints it) and, once the Xen
//! platform is up, to the PV console ring (xenconsoled's log, `xl console`).
//!
//! [`out!`](crate::out) writes one protocol line (see `docs/LINES.md` of the
//! project); [`Logger`] routes the `log` crate here as `[LEVEL] message`.

use core::fmt::{self, Write};

use x86_64::instructions::port::Port;
use xenblk::pvh::Xen;

/// QEMU's debugcon / Xen's HVM debug port (`XEN_HVM_DEBUGCONS_IOPORT`).
const DEBUGCON_PORT: u16 = 0xe9;

static XEN: spin::Once<&'static Xen> = spin::Once::new();
/// Keeps lines whole. One vCPU and no interrupts: it is only ever found
/// held when a panic interrupts a write, and then the panic writes anyway.
static LINE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// From now on, lines also go to Xen's PV console.
pub fn attach_xen(xen: &'static Xen) {
    XEN.call_once(|| xen);
}

fn write_bytes(bytes: &[u8]) {
    let mut port = Port::<u8>::new(DEBUGCON_PORT);
    for &b in bytes {
        // SAFETY: port 0xe9 is a write-only debug port with no side effect
        // on our state (and ignored where nothing listens).
        unsafe { port.write(b) };
    }
    if let Some(xen) = XEN.get() {
        xen.console_write(bytes);
    }
}

/// Buffers a line so that each sink sees it in few writes.
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Writes `args` and a newline as one line to every sink.
pub fn line(args: fmt::Arguments<'_>) {
    let guard = LINE_LOCK.try_lock();
    let mut buf = LineBuf {
        buf: [0; 256],
        len: 0,
    };
    let _ = buf.write_fmt(args);
    let _ = buf.write_str("\n");
    buf.flush();
    drop(guard);
}

/// Writes one protocol line (format arguments as for `format!`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}

/// The `log` backend: `[LEVEL] message` lines.
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            line(format_args!("[{:<5}] {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs [`Logger`] at `level`.
pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
