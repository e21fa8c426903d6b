//! The xenstore operations a simulated backend needs, as a trait.
//!
//! A backend runs in dom0 and talks to xenstored directly, not through a
//! guest ring. [`BackendStore`] is that direct, in-process API. It is
//! implemented by the simulator's xenstored and by [`MemStore`], a plain map
//! for tests that need no daemon (a test's hand-written frontend then writes
//! its keys into the same `MemStore`).

use std::collections::BTreeMap;
use std::string::String;
use std::sync::Mutex;
use std::vec::Vec;

use crate::error::XsErrno;
use crate::hal::DomId;
use crate::xenstore::XsError;
use crate::Result;

/// Access given to a domain by a node's permissions (`XS_PERM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// The xenstore API a simulated backend (and the toolstack part that creates
/// it) uses, acting as dom0.
///
/// `Send + Sync`: the backend is stepped from the simulator's thread in
/// threaded mode while tests use the same store.
pub trait BackendStore: Send + Sync {
    /// The value of `path`, or `None` when it does not exist.
    fn read(&self, path: &str) -> Option<String>;

    /// Writes `value` to `path`, creating missing parents (as xenstored's
    /// `XS_WRITE` does). Writing fires the watches on `path`.
    ///
    /// # Errors
    ///
    /// [`XsError::Errno`] with the daemon's errno.
    fn write(&self, path: &str, value: &str) -> Result<(), XsError>;

    /// Removes `path` and everything below it (missing is not an error).
    ///
    /// # Errors
    ///
    /// [`XsError::Errno`] with the daemon's errno.
    fn rm(&self, path: &str) -> Result<(), XsError>;

    /// Sets the permissions of `path` (`XS_SET_PERMS`): `owner` has full
    /// access, every other domain gets `others`, except the listed ones.
    ///
    /// # Errors
    ///
    /// [`XsError::Errno`] with `ENOENT` when `path` does not exist.
    fn set_perms(
        &self,
        path: &str,
        owner: DomId,
        others: Perm,
        acl: &[(DomId, Perm)],
    ) -> Result<(), XsError>;

    /// A counter that moves whenever anything in the store changes, if the
    /// store keeps one (`None`: unknown, read every time). While it stands
    /// still a read returns what it returned before, so a backend polling a
    /// key may skip the read.
    fn mutations(&self) -> Option<u64> {
        None
    }
}

/// The permissions of a node, as [`BackendStore::set_perms`] set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePerms {
    /// The owner (full access).
    pub owner: DomId,
    /// Access of domains not listed.
    pub others: Perm,
    /// Access of the listed domains.
    pub acl: Vec<(DomId, Perm)>,
}

/// One node of a [`MemStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    value: String,
    owner: DomId,
    others: Perm,
    acl: Vec<(DomId, Perm)>,
}

/// A xenstore without a daemon: a sorted map of paths, with permissions
/// recorded (not enforced) so tests can check them. Parents are created on
/// write, as xenstored does.
#[derive(Debug, Default)]
pub struct MemStore {
    nodes: Mutex<BTreeMap<String, Node>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The names of the children of `path`, sorted.
    pub fn directory(&self, path: &str) -> Vec<String> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.lock()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| {
                let rest = &k[prefix.len()..];
                (!rest.contains('/')).then(|| rest.into())
            })
            .collect()
    }

    /// The permissions of `path`.
    pub fn perms(&self, path: &str) -> Option<NodePerms> {
        self.lock().get(path).map(|n| NodePerms {
            owner: n.owner,
            others: n.others,
            acl: n.acl.clone(),
        })
    }
}

impl BackendStore for MemStore {
    fn read(&self, path: &str) -> Option<String> {
        self.lock().get(path).map(|n| n.value.clone())
    }

    fn write(&self, path: &str, value: &str) -> Result<(), XsError> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(XsError::Errno(XsErrno::EINVAL));
        }
        let mut nodes = self.lock();
        let mut parent = String::new();
        for part in path.trim_start_matches('/').split('/') {
            parent.push('/');
            parent.push_str(part);
            if parent != path && !nodes.contains_key(&parent) {
                nodes.insert(
                    parent.clone(),
                    Node {
                        value: String::new(),
                        owner: DomId::DOM0,
                        others: Perm::None,
                        acl: Vec::new(),
                    },
                );
            }
        }
        nodes
            .entry(path.into())
            .and_modify(|n| n.value = value.into())
            .or_insert(Node {
                value: value.into(),
                owner: DomId::DOM0,
                others: Perm::None,
                acl: Vec::new(),
            });
        Ok(())
    }

    fn rm(&self, path: &str) -> Result<(), XsError> {
        let prefix = format!("{path}/");
        self.lock()
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        Ok(())
    }

    fn set_perms(
        &self,
        path: &str,
        owner: DomId,
        others: Perm,
        acl: &[(DomId, Perm)],
    ) -> Result<(), XsError> {
        let mut nodes = self.lock();
        let n = nodes.get_mut(path).ok_or(XsError::Errno(XsErrno::ENOENT))?;
        n.owner = owner;
        n.others = others;
        n.acl = acl.to_vec();
        Ok(())
    }
}

/// The simulated xenstored serves backends as dom0 through its direct API,
/// so the frontend under test reaches the same tree through the real ring.
impl BackendStore for crate::sim::xenstored::XenStored {
    fn read(&self, path: &str) -> Option<String> {
        self.read_opt(DomId::DOM0, path).ok().flatten()
    }

    fn mutations(&self) -> Option<u64> {
        Some(crate::sim::xenstored::XenStored::mutations(self))
    }

    fn write(&self, path: &str, value: &str) -> Result<(), XsError> {
        crate::sim::xenstored::XenStored::write(self, DomId::DOM0, path, value)
    }

    fn rm(&self, path: &str) -> Result<(), XsError> {
        match crate::sim::xenstored::XenStored::rm(self, DomId::DOM0, path) {
            Err(XsError::Errno(XsErrno::ENOENT)) => Ok(()),
            r => r,
        }
    }

    fn set_perms(
        &self,
        path: &str,
        owner: DomId,
        others: Perm,
        acl: &[(DomId, Perm)],
    ) -> Result<(), XsError> {
        use crate::sim::xenstored::{Access, Perm as XsPerm};
        let access = |p: Perm| match p {
            Perm::None => Access::None,
            Perm::Read => Access::Read,
            Perm::Write => Access::Write,
            Perm::Both => Access::Both,
        };
        // xenstored's list: the first entry names the owner and the access
        // of every domain not listed; the rest are exceptions.
        let mut list = vec![XsPerm::new(owner, access(others))];
        list.extend(acl.iter().map(|&(d, p)| XsPerm::new(d, access(p))));
        crate::sim::xenstored::XenStored::set_perms(self, DomId::DOM0, path, &list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_create_parents_and_rm_takes_the_subtree() {
        let s = MemStore::new();
        s.write("/a/b/c", "1").unwrap();
        s.write("/a/b/d", "2").unwrap();
        s.write("/a/bb", "3").unwrap();
        assert_eq!(s.read("/a/b"), Some(String::new()));
        assert_eq!(s.directory("/a/b"), ["c", "d"]);
        assert_eq!(s.directory("/a"), ["b", "bb"]);
        s.set_perms("/a/b", DomId(3), Perm::None, &[(DomId(0), Perm::Read)])
            .unwrap();
        assert_eq!(
            s.perms("/a/b"),
            Some(NodePerms {
                owner: DomId(3),
                others: Perm::None,
                acl: vec![(DomId(0), Perm::Read)]
            })
        );
        s.rm("/a/b").unwrap();
        assert_eq!(s.read("/a/b/c"), None);
        assert_eq!(s.read("/a/bb"), Some("3".into()));
        assert_eq!(
            s.set_perms("/x", DomId(0), Perm::None, &[]),
            Err(XsError::Errno(XsErrno::ENOENT))
        );
        assert!(s.write("rel", "x").is_err());
    }
}
