//! The commands dom0 hands to `bench serve` through xenstore
//! (`data/bench-cmd`, see `modes/bench.rs`), parsed without trusting them.
//!
//! Standalone on purpose (only `core`): `tests/unikernel-noxen.sh` compiles
//! this file alone with `rustc --test` and runs its tests on the host.

/// One command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd<'a> {
    /// `<seq> run <vdev> <job>`: run job `job` on disk `vdev`.
    Run {
        /// The disk's `virtual-device` number.
        vdev: u32,
        /// The job's name, as given (the caller looks it up).
        job: &'a str,
    },
    /// `<seq> quit`: stop serving.
    Quit,
}

/// Why a command with a sequence number cannot be run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// The disk is not a number.
    Vdev,
    /// Neither `run <vdev> <job>` nor `quit`.
    Command,
}

impl Bad {
    /// A one-word token for result lines.
    pub fn token(self) -> &'static str {
        match self {
            Bad::Vdev => "bad-vdev",
            Bad::Command => "bad-command",
        }
    }
}

/// Parses `<seq> run <vdev> <job>` or `<seq> quit` (words separated by any
/// whitespace): `(seq, Ok(cmd))`, `(seq, Err(why))` for a command with a
/// sequence number that cannot be run (so that it can still be answered),
/// or `None` when there is no sequence number at all.
pub fn parse(s: &str) -> Option<(u64, Result<Cmd<'_>, Bad>)> {
    let mut w = s.split_whitespace();
    let seq = w.next()?.parse::<u64>().ok()?;
    let cmd = match (w.next(), w.next(), w.next(), w.next()) {
        (Some("quit"), None, None, None) => Ok(Cmd::Quit),
        (Some("run"), Some(v), Some(job), None) => match v.parse::<u32>() {
            Ok(vdev) => Ok(Cmd::Run { vdev, job }),
            Err(_) => Err(Bad::Vdev),
        },
        _ => Err(Bad::Command),
    };
    Some((seq, cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_commands() {
        assert_eq!(
            parse("7 run 51712 4k-qd32"),
            Some((
                7,
                Ok(Cmd::Run {
                    vdev: 51712,
                    job: "4k-qd32"
                })
            ))
        );
        assert_eq!(parse(" 12\tquit\n"), Some((12, Ok(Cmd::Quit))));
    }

    #[test]
    fn bad_commands_keep_their_sequence_number() {
        assert_eq!(parse("3 run x 4k-qd1"), Some((3, Err(Bad::Vdev))));
        assert_eq!(parse("3 run 99999999999 4k-qd1"), Some((3, Err(Bad::Vdev))));
        assert_eq!(parse("4 run 51712"), Some((4, Err(Bad::Command))));
        assert_eq!(
            parse("5 run 51712 1m-seq extra"),
            Some((5, Err(Bad::Command)))
        );
        assert_eq!(parse("6 quit now"), Some((6, Err(Bad::Command))));
        assert_eq!(parse("8 format 51712"), Some((8, Err(Bad::Command))));
        assert_eq!(parse("9"), Some((9, Err(Bad::Command))));
    }

    #[test]
    fn no_sequence_number_is_no_command() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("run 51712 4k-qd1"), None);
        assert_eq!(parse("-1 quit"), None);
        assert_eq!(parse("18446744073709551616 quit"), None);
    }
}
