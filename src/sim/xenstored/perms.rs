//! Node permissions of the simulated xenstored and path checks
//! (`docs/misc/xenstore.txt`: "Database read, write and permissions
//! operations", and the path syntax rules).
//!
//! A node's permission list names its owner and default access first
//! (`n0` = owned by dom0, nobody else may access), then per-domain entries
//! (`r5` = domain 5 may read). The owner and dom0 (privileged) always have
//! full access; a domain not listed gets the default of the first entry.

use std::fmt;

use crate::abi::xs_wire::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};
use crate::error::XsErrno;
use crate::hal::DomId;

/// The access one permission entry grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: both read and write.
    Both,
}

impl Access {
    /// Whether this allows reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this allows writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry (`<perm-as-string>` of `xenstore.txt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry is about (the owner, for the first entry).
    pub dom: DomId,
    /// What it may do (the default for unlisted domains, for the first entry).
    pub access: Access,
}

impl Perm {
    /// An entry.
    pub const fn new(dom: DomId, access: Access) -> Perm {
        Perm { dom, access }
    }

    /// Parses `n0`, `r5`, `w12`, `b65535`.
    pub fn parse(s: &str) -> Option<Perm> {
        let mut chars = s.chars();
        let access = match chars.next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Perm::new(DomId(digits.parse().ok()?), access))
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.dom.0)
    }
}

/// Whether `dom` is privileged (only dom0 in this simulator).
pub fn privileged(dom: DomId) -> bool {
    dom == DomId::DOM0
}

/// The access `dom` has to a node with `perms`.
pub fn access(dom: DomId, perms: &[Perm]) -> Access {
    let Some(first) = perms.first() else {
        return if privileged(dom) {
            Access::Both
        } else {
            Access::None
        };
    };
    if privileged(dom) || first.dom == dom {
        return Access::Both;
    }
    perms[1..]
        .iter()
        .find(|p| p.dom == dom)
        .map_or(first.access, |p| p.access)
}

/// Whether `dom` owns a node with `perms` (or is privileged).
pub fn owns(dom: DomId, perms: &[Perm]) -> bool {
    privileged(dom) || perms.first().is_some_and(|p| p.dom == dom)
}

/// The home of a domain: `/local/domain/<id>`.
pub fn home(dom: DomId) -> String {
    format!("/local/domain/{}", dom.0)
}

/// Whether `child` is `parent` or below it (`xenstore.txt`: "<child> and
/// <parent>"). Special `@` paths only match themselves.
pub fn is_child(child: &str, parent: &str) -> bool {
    if child.starts_with('@') || parent.starts_with('@') {
        return child == parent;
    }
    parent == "/"
        || child == parent
        || (child.len() > parent.len()
            && child.starts_with(parent)
            && child.as_bytes()[parent.len()] == b'/')
}

/// The parent of an absolute path other than `/`.
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&path[..i]),
        _ => None,
    }
}

/// Turns a request path into an absolute one: relative paths are taken
/// relative to the home of `dom`. Checks the syntax rules of `xenstore.txt`
/// (characters `[A-Za-z0-9-/_@]`, no `//`, no trailing `/`, not empty,
/// length limits); `@` names are allowed only when `special` (watches).
///
/// # Errors
///
/// `EINVAL` for any violation.
pub fn canonical(dom: DomId, path: &str, special: bool) -> Result<String, XsErrno> {
    if path.is_empty() {
        return Err(XsErrno::EINVAL);
    }
    if let Some(name) = path.strip_prefix('@') {
        let ok = special
            && path.len() <= XENSTORE_REL_PATH_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        return if ok {
            Ok(path.into())
        } else {
            Err(XsErrno::EINVAL)
        };
    }
    let valid_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'));
    if !valid_chars || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return Err(XsErrno::EINVAL);
    }
    let abs = if path.starts_with('/') {
        path.to_string()
    } else {
        if path.len() > XENSTORE_REL_PATH_MAX {
            return Err(XsErrno::EINVAL);
        }
        format!("{}/{}", home(dom), path)
    };
    if abs.len() > XENSTORE_ABS_PATH_MAX {
        return Err(XsErrno::EINVAL);
    }
    Ok(abs)
}

/// The form of `abs` a watch registered as `given` by `dom` reports:
/// relative to the home if `given` was relative (`xenstore.txt`, WATCH_EVENT).
pub fn as_seen(dom: DomId, given: &str, abs: &str) -> String {
    if given.starts_with('/') || given.starts_with('@') {
        return abs.into();
    }
    let prefix = format!("{}/", home(dom));
    abs.strip_prefix(&prefix).unwrap_or(abs).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: DomId = DomId(5);

    #[test]
    fn perms_parse_and_print() {
        for s in ["n0", "r5", "w12", "b65535"] {
            assert_eq!(Perm::parse(s).unwrap().to_string(), s);
        }
        for s in ["", "x1", "r", "r-1", "r65536", "r1a", "R1"] {
            assert_eq!(Perm::parse(s), None, "{s}");
        }
    }

    #[test]
    fn access_follows_owner_default_and_entries() {
        let perms = [
            Perm::new(DomId(0), Access::None),
            Perm::new(G, Access::Read),
            Perm::new(DomId(7), Access::Both),
        ];
        assert_eq!(access(DomId::DOM0, &perms), Access::Both);
        assert_eq!(access(G, &perms), Access::Read);
        assert_eq!(access(DomId(7), &perms), Access::Both);
        assert_eq!(access(DomId(9), &perms), Access::None);
        let owned = [Perm::new(G, Access::Read)];
        assert_eq!(access(G, &owned), Access::Both);
        assert_eq!(access(DomId(9), &owned), Access::Read);
        assert!(owns(G, &owned) && owns(DomId::DOM0, &owned) && !owns(DomId(9), &owned));
    }

    #[test]
    fn paths_are_checked_and_made_absolute() {
        assert_eq!(
            canonical(G, "device/vbd", false).unwrap(),
            "/local/domain/5/device/vbd"
        );
        assert_eq!(canonical(G, "/", false).unwrap(), "/");
        assert_eq!(canonical(G, "/a_b-c@d", false).unwrap(), "/a_b-c@d");
        assert_eq!(
            canonical(G, "@releaseDomain", true).unwrap(),
            "@releaseDomain"
        );
        for bad in [
            "",
            "/a//b",
            "/a/",
            "a b",
            "/a.b",
            "@releaseDomain",
            "/\u{e9}",
        ] {
            assert_eq!(canonical(G, bad, false), Err(XsErrno::EINVAL), "{bad:?}");
        }
        let long = "a".repeat(XENSTORE_REL_PATH_MAX + 1);
        assert_eq!(canonical(G, &long, false), Err(XsErrno::EINVAL));
        let abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
        assert_eq!(canonical(G, &abs, false), Err(XsErrno::EINVAL));
    }

    #[test]
    fn child_and_parent() {
        assert!(is_child("/a/b", "/a") && is_child("/a", "/a") && is_child("/a", "/"));
        assert!(!is_child("/ab", "/a") && !is_child("/a", "/a/b"));
        assert!(!is_child("@releaseDomain", "/") && is_child("@x", "@x"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(as_seen(G, "device", "/local/domain/5/device/x"), "device/x");
        assert_eq!(
            as_seen(G, "/local", "/local/domain/5/x"),
            "/local/domain/5/x"
        );
    }
}
