//! The xenstore database of the simulated xenstored: nodes, permissions,
//! watches, transactions and connections (`docs/misc/xenstore.txt`).
//!
//! [`Store`] is pure: it knows nothing of rings or event channels. Wire
//! requests enter through [`Store::handle`] (see `protocol.rs`) and replies
//! and watch events leave through [`Store::take_output`]; in-process users
//! (simulated backends "in dom0") call [`Store::read`], [`Store::write`], ...
//! directly and poll their watch events with [`Store::poll_event`].
//!
//! Transactions work on a snapshot of the whole tree taken at
//! `TRANSACTION_START`. Every node carries a generation number that changes
//! whenever its value, permissions or list of children change; a commit
//! fails with `EAGAIN` if any node the transaction read or wrote (or found
//! absent) has a different generation in the live tree than it had in the
//! snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::perms::{self, access, canonical, is_child, parent, Access, Perm};
use crate::abi::xs_wire::{msg_type::XS_WATCH_EVENT, XsdSockmsg, XENSTORE_PAYLOAD_MAX};
use crate::error::XsErrno;
use crate::hal::DomId;
use crate::xenstore::wire::{self, Message, WatchEvent};
use crate::xenstore::XsError;
use crate::Result;

/// Identifies a connection to the store (a guest's ring, or an in-process
/// client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) value: Vec<u8>,
    pub(super) perms: Vec<Perm>,
    gen: u64,
}

pub(super) type Tree = BTreeMap<String, Node>;

/// A change that may fire watches.
#[derive(Clone, Debug)]
struct Change {
    path: String,
    /// The node and its subtree were removed: watches below fire too.
    removal: bool,
    /// The node's permissions (before removal), deciding who may see it.
    perms: Vec<Perm>,
}

/// What one operation did: generations it depended on (first sight only),
/// nodes it wrote, changes to announce.
#[derive(Default)]
pub(super) struct Effects {
    base: BTreeMap<String, Option<u64>>,
    written: BTreeSet<String>,
    changes: Vec<Change>,
}

impl Effects {
    fn touch(&mut self, tree: &Tree, path: &str) {
        if !self.base.contains_key(path) {
            self.base.insert(path.into(), tree.get(path).map(|n| n.gen));
        }
    }
}

struct Txn {
    conn: ConnId,
    tree: Tree,
    fx: Effects,
}

struct Watch {
    conn: ConnId,
    given: String,
    abs: String,
    token: String,
}

struct Conn {
    dom: DomId,
    out: VecDeque<Message>,
}

/// The simulated xenstore database.
pub struct Store {
    nodes: Tree,
    next_gen: u64,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Txn>,
    next_tx: u32,
    introduced: BTreeSet<u16>,
    fail_commits: u32,
    /// Bumped whenever the live tree changes (see [`Store::mutations`]).
    mutations: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

fn xs(e: XsErrno) -> XsError {
    XsError::Errno(e)
}

impl Store {
    /// A store holding `/`, `/local`, `/local/domain`, `/local/domain/0`,
    /// `/tool` and `/vm`, all owned by dom0 and private (`n0`).
    pub fn new() -> Store {
        let mut s = Store {
            nodes: Tree::new(),
            next_gen: 1,
            conns: BTreeMap::new(),
            next_conn: 1,
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            introduced: BTreeSet::new(),
            fail_commits: 0,
            mutations: 0,
        };
        let private = vec![Perm::new(DomId::DOM0, Access::None)];
        s.nodes.insert(
            "/".into(),
            Node {
                value: Vec::new(),
                perms: private.clone(),
                gen: 0,
            },
        );
        for p in ["/local/domain/0", "/tool", "/vm"] {
            s.mknod(p, b"", &private);
        }
        s
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// Privileged creation with explicit permissions, no watches fired.
    fn mknod(&mut self, path: &str, value: &[u8], perms: &[Perm]) {
        let mut fx = Effects::default();
        let gen = self.gen();
        self.mutations += 1;
        let _ = op_write(&mut self.nodes, DomId::DOM0, path, value, gen, &mut fx);
        if let Some(n) = self.nodes.get_mut(path) {
            n.perms = perms.to_vec();
        }
    }

    // ----- domains ----------------------------------------------------------------

    /// Sets up a domain's home as libxl does: `/local/domain/<id>` and its
    /// `device` and `control` directories readable by the domain (owned by
    /// dom0), `control/shutdown`, `control/feature-{poweroff,reboot,suspend}`
    /// and `control/sysrq` empty and writable by it, `data` owned by the
    /// domain, `domid` and `name` keys. Fires `@introduceDomain`.
    pub fn introduce_domain(&mut self, dom: DomId) {
        let ro = [
            Perm::new(DomId::DOM0, Access::None),
            Perm::new(dom, Access::Read),
        ];
        let home = perms::home(dom);
        self.mknod(&home, b"", &ro);
        for d in ["device", "control"] {
            self.mknod(&format!("{home}/{d}"), b"", &ro);
        }
        self.mknod(
            &format!("{home}/data"),
            b"",
            &[Perm::new(dom, Access::None)],
        );
        // The toolstack's requests and what the guest says it supports,
        // writable by the guest (it empties `shutdown` to acknowledge a
        // request), empty, as toolstacks create them.
        let rw = [
            Perm::new(DomId::DOM0, Access::None),
            Perm::new(dom, Access::Both),
        ];
        for k in [
            "shutdown",
            "feature-poweroff",
            "feature-reboot",
            "feature-suspend",
            "sysrq",
        ] {
            self.mknod(&format!("{home}/control/{k}"), b"", &rw);
        }
        self.mknod(&format!("{home}/domid"), dom.0.to_string().as_bytes(), &ro);
        let name = format!("guest{}", dom.0);
        self.mknod(&format!("{home}/name"), name.as_bytes(), &ro);
        self.introduced.insert(dom.0);
        self.fire(vec![special("@introduceDomain")]);
    }

    /// Removes a domain's home, closes its connections and fires
    /// `@releaseDomain`.
    pub fn release_domain(&mut self, dom: DomId) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dom == dom)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.disconnect(id);
        }
        let _ = self.rm(DomId::DOM0, &perms::home(dom));
        self.introduced.remove(&dom.0);
        self.fire(vec![special("@releaseDomain")]);
    }

    /// Whether `dom` was introduced and not released.
    pub fn is_introduced(&self, dom: DomId) -> bool {
        self.introduced.contains(&dom.0)
    }

    // ----- connections ------------------------------------------------------------

    /// Opens a connection acting as `dom`.
    pub fn connect(&mut self, dom: DomId) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                dom,
                out: VecDeque::new(),
            },
        );
        id
    }

    /// Closes a connection, dropping its watches, transactions and output.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.reset(conn);
    }

    /// Drops the watches and transactions of `conn` (`RESET_WATCHES`).
    pub(super) fn reset(&mut self, conn: ConnId) {
        self.watches.retain(|w| w.conn != conn);
        self.txs.retain(|_, t| t.conn != conn);
    }

    /// The domain a connection acts as.
    pub fn conn_dom(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.dom)
    }

    pub(super) fn push_out(&mut self, conn: ConnId, m: Message) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.push_back(m);
        }
    }

    /// The next message (reply or watch event) for a connection.
    pub fn take_output(&mut self, conn: ConnId) -> Option<Message> {
        self.conns.get_mut(&conn)?.out.pop_front()
    }

    /// Whether a connection has output waiting.
    pub fn has_output(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.out.is_empty())
    }

    /// The next watch event of an in-process connection (other output is
    /// skipped).
    pub fn poll_event(&mut self, conn: ConnId) -> Option<WatchEvent> {
        loop {
            let m = self.take_output(conn)?;
            if m.header.ty == XS_WATCH_EVENT {
                if let Ok(ev) = wire::parse_watch_event(&m.payload) {
                    return Some(ev);
                }
            }
        }
    }

    // ----- inspection and faults ----------------------------------------------------

    /// Whether a node exists (no permission check).
    pub fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// Every node and its value, in path order (no permission check).
    pub fn dump(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|(p, n)| (p.clone(), String::from_utf8_lossy(&n.value).into_owned()))
            .collect()
    }

    /// Number of watches registered (by all connections).
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Number of open transactions.
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// A counter that moves whenever a node of the live tree is created,
    /// changed or removed (a write, a removal, new permissions, a commit):
    /// while it stands still, every read returns what it returned before.
    /// Lets an in-process client that polls a key skip the read.
    pub fn mutations(&self) -> u64 {
        self.mutations
    }

    /// Makes the next `n` commits fail with `EAGAIN` regardless of conflicts.
    pub fn fail_next_commits(&mut self, n: u32) {
        self.fail_commits = n;
    }

    // ----- operations, possibly in a transaction -------------------------------------

    /// Runs `op` on the live tree (then announces its changes), or on the
    /// snapshot of transaction `tx` owned by `conn` (recording what it did).
    pub(super) fn run<R>(
        &mut self,
        conn: Option<ConnId>,
        tx: u32,
        op: impl FnOnce(&mut Tree, u64, &mut Effects) -> core::result::Result<R, XsErrno>,
    ) -> core::result::Result<R, XsErrno> {
        let gen = self.gen();
        if tx == 0 {
            let mut fx = Effects::default();
            let r = op(&mut self.nodes, gen, &mut fx);
            if !fx.written.is_empty() {
                self.mutations += 1;
            }
            let r = r?;
            self.fire(fx.changes);
            return Ok(r);
        }
        let t = match self.txs.get_mut(&tx) {
            Some(t) if Some(t.conn) == conn => t,
            _ => return Err(XsErrno::ENOENT),
        };
        let mut fx = Effects::default();
        let r = op(&mut t.tree, gen, &mut fx)?;
        for (p, g) in fx.base {
            t.fx.base.entry(p).or_insert(g);
        }
        t.fx.written.extend(fx.written);
        t.fx.changes.extend(fx.changes);
        Ok(r)
    }

    /// Starts a transaction for `conn`.
    pub(super) fn tx_start(&mut self, conn: ConnId) -> u32 {
        let mut id = self.next_tx;
        while id == 0 || self.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        self.txs.insert(
            id,
            Txn {
                conn,
                tree: self.nodes.clone(),
                fx: Effects::default(),
            },
        );
        id
    }

    /// Ends transaction `tx` of `conn`: commits it if `commit` and nothing it
    /// depended on changed, else discards it.
    pub(super) fn tx_end(
        &mut self,
        conn: ConnId,
        tx: u32,
        commit: bool,
    ) -> core::result::Result<(), XsErrno> {
        match self.txs.get(&tx) {
            Some(t) if t.conn == conn => {}
            _ => return Err(XsErrno::ENOENT),
        }
        let Some(t) = self.txs.remove(&tx) else {
            return Err(XsErrno::ENOENT);
        };
        if !commit {
            return Ok(());
        }
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(XsErrno::EAGAIN);
        }
        let conflict =
            t.fx.base
                .iter()
                .any(|(p, g)| self.nodes.get(p).map(|n| n.gen) != *g);
        if conflict {
            return Err(XsErrno::EAGAIN);
        }
        let gen = self.gen();
        if !t.fx.written.is_empty() {
            self.mutations += 1;
        }
        for p in &t.fx.written {
            match t.tree.get(p) {
                Some(n) => {
                    let mut n = n.clone();
                    n.gen = gen;
                    self.nodes.insert(p.clone(), n);
                }
                None => {
                    self.nodes.remove(p);
                }
            }
        }
        self.fire(t.fx.changes);
        Ok(())
    }

    // ----- watches ----------------------------------------------------------------------

    /// Registers a watch for `conn` and queues its initial event.
    pub(super) fn add_watch(
        &mut self,
        conn: ConnId,
        path: &str,
        token: &str,
    ) -> core::result::Result<(), XsErrno> {
        let dom = self.conn_dom(conn).ok_or(XsErrno::EINVAL)?;
        let abs = canonical(dom, path, true)?;
        if self
            .watches
            .iter()
            .any(|w| w.conn == conn && w.abs == abs && w.token == token)
        {
            return Err(XsErrno::EEXIST);
        }
        self.watches.push(Watch {
            conn,
            given: path.into(),
            abs,
            token: token.into(),
        });
        Ok(())
    }

    /// Queues the initial event of a new watch (`xenstore.txt`: "triggered
    /// once straight away, with <path> equal to <wpath>").
    pub(super) fn initial_event(&mut self, conn: ConnId, path: &str, token: &str) {
        if let Some(m) = event_message(path, token) {
            self.push_out(conn, m);
        }
    }

    /// Removes a watch of `conn`.
    pub(super) fn remove_watch(
        &mut self,
        conn: ConnId,
        path: &str,
        token: &str,
    ) -> core::result::Result<(), XsErrno> {
        let dom = self.conn_dom(conn).ok_or(XsErrno::EINVAL)?;
        let abs = canonical(dom, path, true)?;
        let before = self.watches.len();
        self.watches
            .retain(|w| !(w.conn == conn && w.abs == abs && w.token == token));
        if self.watches.len() == before {
            return Err(XsErrno::ENOENT);
        }
        Ok(())
    }

    /// Matches changes against every watch and queues the events.
    fn fire(&mut self, changes: Vec<Change>) {
        let mut out = Vec::new();
        for c in &changes {
            for w in &self.watches {
                let Some(conn) = self.conns.get(&w.conn) else {
                    continue;
                };
                let epath = if is_child(&c.path, &w.abs) {
                    c.path.as_str()
                } else if c.removal && is_child(&w.abs, &c.path) {
                    w.abs.as_str()
                } else {
                    continue;
                };
                if !c.perms.is_empty() && !access(conn.dom, &c.perms).can_read() {
                    continue;
                }
                let seen = perms::as_seen(conn.dom, &w.given, epath);
                if let Some(m) = event_message(&seen, &w.token) {
                    out.push((w.conn, m));
                }
            }
        }
        for (conn, m) in out {
            self.push_out(conn, m);
        }
    }

    // ----- the in-process API (simulated backends, tests) ------------------------------

    /// `READ` as `dom`.
    ///
    /// # Errors
    ///
    /// `XsError::Errno(errno)`: `EINVAL` for a bad path, `ENOENT`,
    /// `EACCES`; [`XsError::Malformed`] if the value is not UTF-8.
    pub fn read(&mut self, dom: DomId, path: &str) -> Result<String, XsError> {
        let v = self
            .run(None, 0, |t, _, fx| op_read(t, dom, path, fx))
            .map_err(xs)?;
        wire::parse_value(&v)
    }

    /// `READ` as `dom`, with `ENOENT` as `None`.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read), except `ENOENT`.
    pub fn read_opt(&mut self, dom: DomId, path: &str) -> Result<Option<String>, XsError> {
        match self.read(dom, path) {
            Err(XsError::Errno(XsErrno::ENOENT)) => Ok(None),
            r => r.map(Some),
        }
    }

    /// `WRITE` as `dom` (creates missing parents, fires watches).
    ///
    /// # Errors
    ///
    /// `XsError::Errno(errno)`: `EINVAL`, `EACCES`.
    pub fn write(&mut self, dom: DomId, path: &str, value: &str) -> Result<(), XsError> {
        self.run(None, 0, |t, g, fx| {
            op_write(t, dom, path, value.as_bytes(), g, fx)
        })
        .map_err(xs)
    }

    /// `MKDIR` as `dom`.
    ///
    /// # Errors
    ///
    /// As for [`write`](Self::write).
    pub fn mkdir(&mut self, dom: DomId, path: &str) -> Result<(), XsError> {
        self.run(None, 0, |t, g, fx| op_mkdir(t, dom, path, g, fx))
            .map_err(xs)
    }

    /// `RM` as `dom` (the whole subtree).
    ///
    /// # Errors
    ///
    /// `XsError::Errno(errno)`: `EINVAL`, `EACCES`, `ENOENT` when even the
    /// parent is missing.
    pub fn rm(&mut self, dom: DomId, path: &str) -> Result<(), XsError> {
        self.run(None, 0, |t, g, fx| op_rm(t, dom, path, g, fx))
            .map_err(xs)
    }

    /// `DIRECTORY` as `dom`.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read).
    pub fn directory(&mut self, dom: DomId, path: &str) -> Result<Vec<String>, XsError> {
        self.run(None, 0, |t, _, fx| op_directory(t, dom, path, fx))
            .map_err(xs)
    }

    /// `GET_PERMS` as `dom`.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read).
    pub fn get_perms(&mut self, dom: DomId, path: &str) -> Result<Vec<Perm>, XsError> {
        self.run(None, 0, |t, _, fx| op_get_perms(t, dom, path, fx))
            .map_err(xs)
    }

    /// `SET_PERMS` as `dom` (only the owner or dom0 may).
    ///
    /// # Errors
    ///
    /// `XsError::Errno(errno)`: `EINVAL` for an empty list, `ENOENT`,
    /// `EACCES`.
    pub fn set_perms(&mut self, dom: DomId, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.run(None, 0, |t, g, fx| op_set_perms(t, dom, path, perms, g, fx))
            .map_err(xs)
    }

    /// `WATCH` for an in-process connection; the initial event is queued for
    /// [`poll_event`](Self::poll_event).
    ///
    /// # Errors
    ///
    /// `XsError::Errno(errno)`: `EINVAL` for a bad path or unknown
    /// connection, `EEXIST` for a duplicate.
    pub fn watch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        self.add_watch(conn, path, token).map_err(xs)?;
        self.initial_event(conn, path, token);
        Ok(())
    }

    /// `UNWATCH` for an in-process connection.
    ///
    /// # Errors
    ///
    /// `XsError::Errno(ENOENT)` for an unknown watch.
    pub fn unwatch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        self.remove_watch(conn, path, token).map_err(xs)
    }
}

fn special(name: &str) -> Change {
    Change {
        path: name.into(),
        removal: false,
        perms: Vec::new(),
    }
}

/// A `WATCH_EVENT` message (`<epath>|<token>|`, req_id and tx_id 0).
fn event_message(path: &str, token: &str) -> Option<Message> {
    let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
    payload.extend_from_slice(path.as_bytes());
    payload.push(0);
    payload.extend_from_slice(token.as_bytes());
    payload.push(0);
    if payload.len() > XENSTORE_PAYLOAD_MAX {
        log::warn!("sim xenstored: watch event for {path} too large, dropped");
        return None;
    }
    let header = XsdSockmsg {
        ty: XS_WATCH_EVENT,
        req_id: 0,
        tx_id: 0,
        len: payload.len() as u32,
    };
    Some(Message { header, payload })
}

// ----- tree operations (on the live tree or a transaction's snapshot) ------------------

/// `ENOENT`, or `EACCES` if the nearest existing ancestor is not readable
/// by `dom` (so a guest cannot probe what it may not see).
fn missing(tree: &Tree, dom: DomId, path: &str) -> XsErrno {
    let mut p = path;
    while let Some(up) = parent(p) {
        if let Some(n) = tree.get(up) {
            return if access(dom, &n.perms).can_read() {
                XsErrno::ENOENT
            } else {
                XsErrno::EACCES
            };
        }
        p = up;
    }
    XsErrno::ENOENT
}

fn readable<'t>(
    tree: &'t Tree,
    dom: DomId,
    path: &str,
    fx: &mut Effects,
) -> core::result::Result<&'t Node, XsErrno> {
    fx.touch(tree, path);
    let n = tree.get(path).ok_or_else(|| missing(tree, dom, path))?;
    if !access(dom, &n.perms).can_read() {
        return Err(XsErrno::EACCES);
    }
    Ok(n)
}

pub(super) fn op_read(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    fx: &mut Effects,
) -> core::result::Result<Vec<u8>, XsErrno> {
    let abs = canonical(dom, path, false)?;
    Ok(readable(tree, dom, &abs, fx)?.value.clone())
}

pub(super) fn op_directory(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    fx: &mut Effects,
) -> core::result::Result<Vec<String>, XsErrno> {
    let abs = canonical(dom, path, false)?;
    readable(tree, dom, &abs, fx)?;
    Ok(children(tree, &abs))
}

pub(super) fn op_get_perms(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    fx: &mut Effects,
) -> core::result::Result<Vec<Perm>, XsErrno> {
    let abs = canonical(dom, path, false)?;
    Ok(readable(tree, dom, &abs, fx)?.perms.clone())
}

/// Leaf names of the children of `abs`.
fn children(tree: &Tree, abs: &str) -> Vec<String> {
    let prefix = if abs == "/" {
        "/".to_string()
    } else {
        format!("{abs}/")
    };
    tree.range(prefix.clone()..)
        .take_while(|(p, _)| p.starts_with(&prefix))
        .filter_map(|(p, _)| {
            let leaf = &p[prefix.len()..];
            (!leaf.is_empty() && !leaf.contains('/')).then(|| leaf.to_string())
        })
        .collect()
}

/// Creates `abs` and its missing parents (inheriting the permissions of the
/// nearest existing ancestor, owned by `dom` when it is unprivileged), after
/// checking that `dom` may write that ancestor.
fn create(
    tree: &mut Tree,
    dom: DomId,
    abs: &str,
    gen: u64,
    fx: &mut Effects,
) -> core::result::Result<(), XsErrno> {
    let mut missing_paths = vec![abs.to_string()];
    let mut anc = parent(abs).ok_or(XsErrno::EINVAL)?;
    while !tree.contains_key(anc) {
        missing_paths.push(anc.to_string());
        anc = parent(anc).ok_or(XsErrno::ENOENT)?;
    }
    let anc_node = &tree[anc];
    if !access(dom, &anc_node.perms).can_write() {
        return Err(XsErrno::EACCES);
    }
    let mut new_perms = anc_node.perms.clone();
    if !perms::privileged(dom) {
        if let Some(first) = new_perms.first_mut() {
            first.dom = dom;
        }
    }
    fx.touch(tree, anc);
    fx.written.insert(anc.to_string());
    if let Some(n) = tree.get_mut(anc) {
        n.gen = gen;
    }
    for p in missing_paths.into_iter().rev() {
        fx.touch(tree, &p);
        fx.written.insert(p.clone());
        tree.insert(
            p,
            Node {
                value: Vec::new(),
                perms: new_perms.clone(),
                gen,
            },
        );
    }
    Ok(())
}

fn changed(tree: &Tree, abs: &str, fx: &mut Effects) {
    let perms = tree.get(abs).map(|n| n.perms.clone()).unwrap_or_default();
    fx.changes.push(Change {
        path: abs.into(),
        removal: false,
        perms,
    });
}

pub(super) fn op_write(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    value: &[u8],
    gen: u64,
    fx: &mut Effects,
) -> core::result::Result<(), XsErrno> {
    let abs = canonical(dom, path, false)?;
    match tree.get(&abs) {
        Some(n) if !access(dom, &n.perms).can_write() => return Err(XsErrno::EACCES),
        Some(_) => fx.touch(tree, &abs),
        None => create(tree, dom, &abs, gen, fx)?,
    }
    fx.written.insert(abs.clone());
    if let Some(n) = tree.get_mut(&abs) {
        n.value = value.to_vec();
        n.gen = gen;
    }
    changed(tree, &abs, fx);
    Ok(())
}

pub(super) fn op_mkdir(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    gen: u64,
    fx: &mut Effects,
) -> core::result::Result<(), XsErrno> {
    let abs = canonical(dom, path, false)?;
    if let Some(n) = tree.get(&abs) {
        if !access(dom, &n.perms).can_write() {
            return Err(XsErrno::EACCES);
        }
        fx.touch(tree, &abs);
        return Ok(());
    }
    create(tree, dom, &abs, gen, fx)?;
    changed(tree, &abs, fx);
    Ok(())
}

pub(super) fn op_rm(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    gen: u64,
    fx: &mut Effects,
) -> core::result::Result<(), XsErrno> {
    let abs = canonical(dom, path, false)?;
    let up = parent(&abs).ok_or(XsErrno::EINVAL)?.to_string();
    let Some(n) = tree.get(&abs) else {
        fx.touch(tree, &abs);
        return if tree.contains_key(&up) {
            Ok(())
        } else {
            Err(missing(tree, dom, &abs))
        };
    };
    if !access(dom, &n.perms).can_write() {
        return Err(XsErrno::EACCES);
    }
    let perms = n.perms.clone();
    let prefix = format!("{abs}/");
    let doomed: Vec<String> = core::iter::once(abs.clone())
        .chain(
            tree.range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .map(|(p, _)| p.clone()),
        )
        .collect();
    for p in doomed {
        fx.touch(tree, &p);
        tree.remove(&p);
        fx.written.insert(p);
    }
    fx.touch(tree, &up);
    fx.written.insert(up.clone());
    if let Some(n) = tree.get_mut(&up) {
        n.gen = gen;
    }
    fx.changes.push(Change {
        path: abs,
        removal: true,
        perms,
    });
    Ok(())
}

pub(super) fn op_set_perms(
    tree: &mut Tree,
    dom: DomId,
    path: &str,
    new: &[Perm],
    gen: u64,
    fx: &mut Effects,
) -> core::result::Result<(), XsErrno> {
    let abs = canonical(dom, path, false)?;
    if new.is_empty() {
        return Err(XsErrno::EINVAL);
    }
    fx.touch(tree, &abs);
    let n = tree.get(&abs).ok_or_else(|| missing(tree, dom, &abs))?;
    if !perms::owns(dom, &n.perms) {
        return Err(XsErrno::EACCES);
    }
    fx.written.insert(abs.clone());
    if let Some(n) = tree.get_mut(&abs) {
        n.perms = new.to_vec();
        n.gen = gen;
    }
    changed(tree, &abs, fx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_move_with_every_change_of_the_live_tree_only() {
        let mut s = Store::new();
        let d = DomId::DOM0;
        let m = |s: &Store| s.mutations();
        let m0 = m(&s);
        s.write(d, "/a/b", "1").unwrap();
        let m1 = m(&s);
        assert!(m1 > m0, "a write");
        let _ = s.read(d, "/a/b");
        let _ = s.read(d, "/nope");
        let _ = s.directory(d, "/a");
        let _ = s.get_perms(d, "/a");
        assert_eq!(m(&s), m1, "reads change nothing");
        let _ = s.rm(d, "/nope");
        assert_eq!(m(&s), m1, "removing nothing changes nothing");
        s.set_perms(d, "/a", &[Perm::new(d, Access::Read)]).unwrap();
        let m2 = m(&s);
        assert!(m2 > m1, "new permissions");
        // In a transaction: nothing until the commit, nothing on abort.
        let c = s.connect(d);
        let tx = s.tx_start(c);
        s.run(Some(c), tx, |t, g, fx| op_write(t, d, "/a/c", b"2", g, fx))
            .unwrap();
        assert_eq!(m(&s), m2, "inside a transaction");
        s.tx_end(c, tx, false).unwrap();
        assert_eq!(m(&s), m2, "an aborted transaction");
        let tx = s.tx_start(c);
        s.run(Some(c), tx, |t, g, fx| op_write(t, d, "/a/c", b"2", g, fx))
            .unwrap();
        s.tx_end(c, tx, true).unwrap();
        let m3 = m(&s);
        assert!(m3 > m2, "a commit");
        s.rm(d, "/a").unwrap();
        assert!(m(&s) > m3, "a removal");
        s.introduce_domain(DomId(3));
        assert!(m(&s) > m3 + 1, "a new domain's home");
    }
}
