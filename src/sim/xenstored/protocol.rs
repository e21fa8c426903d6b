//! Wire requests of the simulated xenstored (`docs/misc/xenstore.txt`,
//! "Xenstore protocol details"): payload parsing, dispatch to the
//! [`Store`], replies.
//!
//! Each request gets exactly one reply with the same `req_id` and `tx_id`:
//! the request's own type on success, `XS_ERROR` with the errno's name
//! otherwise. Watch events a request causes are queued before its reply (as
//! the C xenstored does), except a new watch's initial event, which follows
//! its `OK`.

use super::engine::{op_directory, op_get_perms, op_mkdir, op_read, op_rm, op_set_perms, op_write};
use super::engine::{ConnId, Store};
use super::perms::{self, Perm};
use crate::abi::xs_wire::msg_type::*;
use crate::abi::xs_wire::{XsdSockmsg, XENSTORE_PAYLOAD_MAX};
use crate::error::XsErrno;
use crate::hal::DomId;
use crate::xenstore::wire::Message;

type R<T> = core::result::Result<T, XsErrno>;

/// The NUL-terminated strings of a request payload; `EINVAL` unless the
/// payload is non-empty, ends in NUL and is UTF-8.
fn strings(payload: &[u8]) -> R<Vec<&str>> {
    let Some((&0, body)) = payload.split_last() else {
        return Err(XsErrno::EINVAL);
    };
    body.split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).map_err(|_| XsErrno::EINVAL))
        .collect()
}

/// Exactly one NUL-terminated string.
fn one(payload: &[u8]) -> R<&str> {
    match strings(payload)?.as_slice() {
        [s] => Ok(s),
        _ => Err(XsErrno::EINVAL),
    }
}

fn domid(s: &str) -> R<DomId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XsErrno::EINVAL);
    }
    s.parse::<u16>().map(DomId).map_err(|_| XsErrno::EINVAL)
}

fn nul_joined<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

impl Store {
    /// Handles one request from connection `conn` and queues the reply (and
    /// any watch events) for [`take_output`](Store::take_output).
    pub fn handle(&mut self, conn: ConnId, req: &Message) {
        let Some(dom) = self.conn_dom(conn) else {
            return;
        };
        let h = req.header;
        let result = self.dispatch(conn, dom, &h, &req.payload);
        let (ty, payload) = match result {
            Ok(p) if p.len() <= XENSTORE_PAYLOAD_MAX => (h.ty, p),
            Ok(_) => (XS_ERROR, nul_joined([XsErrno::E2BIG.name()])),
            Err(e) => (XS_ERROR, nul_joined([e.name()])),
        };
        let reply = Message {
            header: XsdSockmsg {
                ty,
                req_id: h.req_id,
                tx_id: h.tx_id,
                len: payload.len() as u32,
            },
            payload,
        };
        // A new watch fires once right away, after its OK.
        let initial = (ty == XS_WATCH)
            .then(|| strings(&req.payload).ok())
            .flatten();
        self.push_out(conn, reply);
        if let Some([path, token, ..]) = initial.as_deref() {
            self.initial_event(conn, path, token);
        }
    }

    fn dispatch(&mut self, conn: ConnId, dom: DomId, h: &XsdSockmsg, p: &[u8]) -> R<Vec<u8>> {
        let c = Some(conn);
        let tx = h.tx_id;
        match h.ty {
            XS_READ => {
                let path = one(p)?;
                self.run(c, tx, |t, _, fx| op_read(t, dom, path, fx))
            }
            XS_WRITE => {
                let split = p.iter().position(|&b| b == 0).ok_or(XsErrno::EINVAL)?;
                let path = core::str::from_utf8(&p[..split]).map_err(|_| XsErrno::EINVAL)?;
                let value = &p[split + 1..];
                self.run(c, tx, |t, g, fx| op_write(t, dom, path, value, g, fx))?;
                Ok(ok())
            }
            XS_MKDIR => {
                let path = one(p)?;
                self.run(c, tx, |t, g, fx| op_mkdir(t, dom, path, g, fx))?;
                Ok(ok())
            }
            XS_RM => {
                let path = one(p)?;
                self.run(c, tx, |t, g, fx| op_rm(t, dom, path, g, fx))?;
                Ok(ok())
            }
            XS_DIRECTORY => {
                let path = one(p)?;
                let names = self.run(c, tx, |t, _, fx| op_directory(t, dom, path, fx))?;
                Ok(nul_joined(names.iter().map(String::as_str)))
            }
            XS_GET_PERMS => {
                let path = one(p)?;
                let list = self.run(c, tx, |t, _, fx| op_get_perms(t, dom, path, fx))?;
                let text: Vec<String> = list.iter().map(Perm::to_string).collect();
                Ok(nul_joined(text.iter().map(String::as_str)))
            }
            XS_SET_PERMS => {
                let args = strings(p)?;
                let (path, rest) = args.split_first().ok_or(XsErrno::EINVAL)?;
                let list = rest
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| Perm::parse(s).ok_or(XsErrno::EINVAL))
                    .collect::<R<Vec<Perm>>>()?;
                self.run(c, tx, |t, g, fx| op_set_perms(t, dom, path, &list, g, fx))?;
                Ok(ok())
            }
            XS_WATCH | XS_UNWATCH => {
                let args = strings(p)?;
                let [path, token, ..] = args.as_slice() else {
                    return Err(XsErrno::EINVAL);
                };
                if h.ty == XS_WATCH {
                    self.add_watch(conn, path, token)?;
                } else {
                    self.remove_watch(conn, path, token)?;
                }
                Ok(ok())
            }
            XS_TRANSACTION_START => {
                if tx != 0 {
                    return Err(XsErrno::EBUSY);
                }
                Ok(nul_joined([self.tx_start(conn).to_string().as_str()]))
            }
            XS_TRANSACTION_END => {
                let commit = match one(p)? {
                    "T" => true,
                    "F" => false,
                    _ => return Err(XsErrno::EINVAL),
                };
                self.tx_end(conn, tx, commit)?;
                Ok(ok())
            }
            XS_GET_DOMAIN_PATH => {
                let d = domid(one(p)?)?;
                Ok(nul_joined([perms::home(d).as_str()]))
            }
            XS_IS_DOMAIN_INTRODUCED => {
                let d = domid(one(p)?)?;
                let answer = if d == DomId::DOM0 || self.is_introduced(d) {
                    "T"
                } else {
                    "F"
                };
                Ok(nul_joined([answer]))
            }
            XS_RESET_WATCHES => {
                self.reset(conn);
                Ok(ok())
            }
            XS_INTRODUCE | XS_RELEASE | XS_RESUME | XS_SET_TARGET if !perms::privileged(dom) => {
                Err(XsErrno::EACCES)
            }
            XS_CONTROL | XS_INTRODUCE | XS_RELEASE | XS_RESUME | XS_SET_TARGET
            | XS_DIRECTORY_PART => Err(XsErrno::ENOSYS),
            _ => Err(XsErrno::EINVAL),
        }
    }
}
