//! What the benchmarks of `benches/` share: reading their settings from the
//! environment, medians, and the header and results section they write into
//! `docs/PERFORMANCE.md`. The benchmarks themselves are `benches/ring.rs`
//! (xenblk's ring against Xen's C `io/ring.h`) and `benches/driver.rs` (the
//! driver over the simulated blkback).

use std::process::Command;

/// A positive whole number from environment variable `name`, else `default`
/// (also for a value that is not one).
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The median of some values (the lower middle one for an even count; NaN
/// for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The 1-minute load average, from `/proc/loadavg` (`?` when unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The first line `cmd args` prints (`?` when it cannot run).
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The machine, as `lscpu` names it: `<model>, <n> CPUs`.
pub fn machine() -> String {
    let out = Command::new("lscpu")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!("{}, {} CPUs", field("Model name:"), field("CPU(s):"))
}

/// The total instruction count of a callgrind output file's text (its
/// `summary:` or `totals:` line), if it has one.
pub fn callgrind_total(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `text` with what stands between `<!-- <name>:begin -->` and
/// `<!-- <name>:end -->` replaced by `body`, or why it cannot be.
pub fn replace_section(text: &str, name: &str, body: &str) -> Result<String, String> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        return Err(format!("no {name} markers"));
    };
    if e < b {
        return Err(format!("{name} markers out of order"));
    }
    Ok(format!("{}{begin}\n{body}{}", &text[..b], &text[e..]))
}

/// Rewrites the `name` section of the file at `path` (see
/// [`replace_section`]); says on stderr why when it cannot.
pub fn update_doc(path: &str, name: &str, body: &str) {
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("cannot read {path}: results not written");
        return;
    };
    match replace_section(&text, name, body) {
        Ok(new) => match std::fs::write(path, new) {
            Ok(()) => println!("updated {path}"),
            Err(e) => eprintln!("cannot write {path}: {e}"),
        },
        Err(why) => eprintln!("{path}: {why}: results not written"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn callgrind_totals_are_read_from_either_line() {
        assert_eq!(callgrind_total("events: Ir\nsummary: 1234\n"), Some(1234.0));
        assert_eq!(callgrind_total("totals: 99 7\n"), Some(99.0));
        assert_eq!(callgrind_total("events: Ir\n"), None);
        assert_eq!(callgrind_total("summary: many\n"), None);
    }

    #[test]
    fn a_section_is_replaced_between_its_markers_only() {
        let doc = "a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n";
        assert_eq!(
            replace_section(doc, "x", "new\n").unwrap(),
            "a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n"
        );
        assert!(replace_section(doc, "y", "new\n").is_err());
        let swapped = "<!-- x:end -->\n<!-- x:begin -->\n";
        assert!(replace_section(swapped, "x", "new\n").is_err());
    }
}
