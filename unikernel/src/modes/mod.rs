//! What the unikernel runs, chosen by the first word of its command line.
//!
//! `info` (the default) connects every disk and reports on it; `verify`
//! writes, reads back and checks patterns on them; `platform` checks the Xen
//! platform itself; `bench` measures read throughput; `fs` mounts the FAT
//! filesystem dom0 made on each disk, checks a file and writes one; `hold`
//! writes until the toolstack asks the guest to shut down. Adding
//! a mode: a module here with a `run(&Context) -> Outcome`, a [`Mode`] variant, and a line in
//! [`Mode::parse`] and [`run`]. Block modes start with
//! [`info::Platform::open`], [`info::config`] and [`info::attach_all`]
//! and end with [`info::close_all`].
//!
//! Every check prints `xenblk-check <name>: ok|FAIL <detail>`
//! ([`Outcome::report`]) and counts toward the closing line.

mod bench;
mod fs;
mod hold;
mod info;
mod platform;
mod verify;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use xenblk::pvh::Xen;

/// The modes this unikernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// List the virtual disks and what their backends publish.
    Info,
    /// Write and read back patterns, print checksums for dom0 to compare.
    Verify,
    /// Measure throughput.
    Bench,
    /// Check the platform (`xenblk::pvh`) against the real hypervisor.
    Platform,
    /// Mount the FAT filesystem dom0 made on each disk, check a file, write one.
    Fs,
    /// Write until the toolstack asks the guest to go, then go cleanly.
    Hold,
}

impl Mode {
    /// The mode named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Mode> {
        match name {
            "info" => Some(Mode::Info),
            "verify" => Some(Mode::Verify),
            "bench" => Some(Mode::Bench),
            "platform" => Some(Mode::Platform),
            "fs" => Some(Mode::Fs),
            "hold" => Some(Mode::Hold),
            _ => None,
        }
    }
}

/// The parsed command line: `[mode] [key=value ...]`, or `mode=<m> ...`.
#[derive(Debug)]
pub struct Command {
    /// The mode word as given (`info` when the line names none).
    pub mode_name: String,
    /// The mode, or `None` for a word this unikernel does not know.
    pub mode: Option<Mode>,
    /// The remaining `key=value` (or bare) arguments, in order.
    pub args: Vec<String>,
    /// The whole command line.
    pub cmdline: String,
}

impl Command {
    /// Parses a command line.
    pub fn parse(cmdline: &str) -> Command {
        let mut mode_name = None;
        let mut args = Vec::new();
        for word in cmdline.split_whitespace() {
            match (mode_name.is_none(), word.strip_prefix("mode=")) {
                (true, Some(m)) => mode_name = Some(m.to_string()),
                (true, None) if !word.contains('=') => mode_name = Some(word.to_string()),
                _ => args.push(word.to_string()),
            }
        }
        let mode_name = mode_name.unwrap_or_else(|| "info".to_string());
        Command {
            mode: Mode::parse(&mode_name),
            mode_name,
            args,
            cmdline: cmdline.to_string(),
        }
    }

    /// The value of argument `key=value`, if given.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

/// What a mode counts, for the closing line `xenblk: N passed, M failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Checks that passed.
    pub passed: u32,
    /// Checks that failed.
    pub failed: u32,
    /// Shut down with `SHUTDOWN_reboot` (the toolstack asked), not
    /// `SHUTDOWN_poweroff`.
    pub reboot: bool,
}

impl Outcome {
    /// Counts one check.
    pub fn check(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Counts one check and prints `xenblk-check <name>: ok|FAIL <detail>`.
    pub fn report(&mut self, name: &str, ok: bool, detail: &str) {
        crate::out!(
            "xenblk-check {name}: {} {detail}",
            if ok { "ok" } else { "FAIL" }
        );
        self.check(ok);
    }
}

/// Everything a mode gets.
pub struct Context<'a> {
    /// The platform (also the `xenblk::hal::Hal`).
    pub xen: &'static Xen,
    /// The command line.
    pub command: &'a Command,
}

/// Runs the mode the command line names.
pub fn run(ctx: &Context<'_>) -> Outcome {
    match ctx.command.mode {
        Some(Mode::Info) => info::run(ctx),
        Some(Mode::Verify) => verify::run(ctx),
        Some(Mode::Bench) => bench::run(ctx),
        Some(Mode::Platform) => platform::run(ctx),
        Some(Mode::Fs) => fs::run(ctx),
        Some(Mode::Hold) => hold::run(ctx),
        None => {
            crate::out!(
                "xenblk-unikernel: error: unknown mode \"{}\" (known: info, verify, fs, hold, bench, platform)",
                ctx.command.mode_name
            );
            Outcome {
                failed: 1,
                ..Outcome::default()
            }
        }
    }
}
