//! A minimal, temporary xenstore client over the raw ring (`io/xs_wire.h`):
//! one request at a time, `XS_READ` and `XS_DIRECTORY` only. It proves the
//! platform's xenstore page and port work until `xenblk::xenstore` (with
//! its `RingTransport`) lands; then `info` switches to that and this goes.

use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use xenblk::abi::xs_wire::{
    msg_type, XenstoreDomainInterface, XsdSockmsg, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE,
    XSD_SOCKMSG_SIZE,
};
use xenblk::error::XsErrno;
use xenblk::hal::{Hal, Port};
use xenblk::pvh::Xen;
use xenblk::{Error, Result};

/// How long one request may take.
const REQUEST_TIMEOUT_NS: u64 = 5_000_000_000;
const RING: u32 = XENSTORE_RING_SIZE as u32;

/// The indices of `struct xenstore_domain_interface`.
#[derive(Clone, Copy)]
enum Index {
    ReqCons,
    ReqProd,
    RspCons,
    RspProd,
}

/// One connection to xenstored.
pub struct RawXs {
    xen: &'static Xen,
    intf: NonNull<XenstoreDomainInterface>,
    port: Port,
    req_id: u32,
}

impl RawXs {
    /// Connects over the platform's xenstore page.
    ///
    /// # Errors
    ///
    /// [`Error::XsConnection`] without a xenstore page.
    pub fn new(xen: &'static Xen) -> Result<RawXs> {
        let (intf, port) = xen.xenstore_interface()?;
        Ok(RawXs {
            xen,
            intf,
            port,
            req_id: 0,
        })
    }

    /// One of the four ring indices (atomics in the shared page).
    fn index(&self, which: Index) -> &AtomicU32 {
        let p = self.intf.as_ptr();
        // SAFETY: the page lives for the run; only a reference to the
        // atomic field is formed, never to the byte rings.
        unsafe {
            match which {
                Index::ReqCons => &(*p).req_cons,
                Index::ReqProd => &(*p).req_prod,
                Index::RspCons => &(*p).rsp_cons,
                Index::RspProd => &(*p).rsp_prod,
            }
        }
    }

    fn wait(&self, deadline: u64) -> Result<()> {
        self.xen.evtchn_consume(self.port);
        self.xen.evtchn_wait(&[self.port], Some(deadline))
    }

    fn send(&mut self, mut bytes: &[u8], deadline: u64) -> Result<()> {
        let (cons, prod) = (self.index(Index::ReqCons), self.index(Index::ReqProd));
        // SAFETY: a raw pointer to the request ring, written volatile below.
        let ring = unsafe { addr_of_mut!((*self.intf.as_ptr()).req) }.cast::<u8>();
        while !bytes.is_empty() {
            let (c, p) = (cons.load(Ordering::Acquire), prod.load(Ordering::Relaxed));
            let used = p.wrapping_sub(c);
            if used > RING {
                return Err(Error::XsConnection);
            }
            let n = bytes.len().min((RING - used) as usize);
            if n == 0 {
                self.xen.evtchn_notify(self.port)?;
                self.wait(deadline)?;
                continue;
            }
            for (i, &b) in bytes[..n].iter().enumerate() {
                let slot = p.wrapping_add(i as u32) % RING;
                // SAFETY: slot < RING: inside `req`; xenstored reads only
                // below `req_prod`, published after.
                unsafe { ring.add(slot as usize).write_volatile(b) };
            }
            prod.store(p.wrapping_add(n as u32), Ordering::Release);
            bytes = &bytes[n..];
        }
        self.xen.evtchn_notify(self.port)
    }

    fn recv(&mut self, out: &mut [u8], deadline: u64) -> Result<()> {
        let (cons, prod) = (self.index(Index::RspCons), self.index(Index::RspProd));
        // SAFETY: a raw pointer to the response ring, read volatile below.
        let ring = unsafe { addr_of!((*self.intf.as_ptr()).rsp) }.cast::<u8>();
        let mut got = 0;
        while got < out.len() {
            let (c, p) = (cons.load(Ordering::Relaxed), prod.load(Ordering::Acquire));
            let avail = p.wrapping_sub(c);
            if avail > RING {
                return Err(Error::XsConnection);
            }
            let n = (out.len() - got).min(avail as usize);
            if n == 0 {
                self.wait(deadline)?;
                continue;
            }
            for (i, b) in out[got..got + n].iter_mut().enumerate() {
                let slot = c.wrapping_add(i as u32) % RING;
                // SAFETY: slot < RING: inside `rsp`, below `rsp_prod`.
                *b = unsafe { ring.add(slot as usize).read_volatile() };
            }
            cons.store(c.wrapping_add(n as u32), Ordering::Release);
            got += n;
            self.xen.evtchn_notify(self.port)?;
        }
        Ok(())
    }

    /// Sends one request and returns the reply payload.
    fn request(&mut self, ty: u32, payload: &[u8]) -> Result<Vec<u8>> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(Error::XsPayloadTooLarge);
        }
        self.req_id = self.req_id.wrapping_add(1);
        let deadline = self.xen.now_ns() + REQUEST_TIMEOUT_NS;
        let hdr = [ty, self.req_id, 0, payload.len() as u32];
        let mut msg = Vec::with_capacity(XSD_SOCKMSG_SIZE + payload.len());
        hdr.iter()
            .for_each(|w| msg.extend_from_slice(&w.to_le_bytes()));
        msg.extend_from_slice(payload);
        self.send(&msg, deadline)?;
        loop {
            let mut h = [0u8; XSD_SOCKMSG_SIZE];
            self.recv(&mut h, deadline)?;
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let reply = XsdSockmsg {
                ty: word(0),
                req_id: word(4),
                tx_id: word(8),
                len: word(12),
            };
            if reply.len as usize > XENSTORE_PAYLOAD_MAX {
                return Err(Error::XsConnection);
            }
            let mut body = alloc::vec![0u8; reply.len as usize];
            self.recv(&mut body, deadline)?;
            if reply.ty == msg_type::XS_WATCH_EVENT || reply.req_id != self.req_id {
                continue; // not ours (no watches are set; be lenient)
            }
            if reply.ty == msg_type::XS_ERROR {
                let name = core::str::from_utf8(&body)
                    .unwrap_or("")
                    .trim_end_matches('\0');
                return Err(Error::XenStore(XsErrno::from_name(name)));
            }
            return Ok(body);
        }
    }

    fn path(path: &str) -> Vec<u8> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p
    }

    /// `XS_READ`.
    pub fn read(&mut self, path: &str) -> Result<String> {
        let body = self.request(msg_type::XS_READ, &Self::path(path))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `XS_DIRECTORY`: the children's names.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        let body = self.request(msg_type::XS_DIRECTORY, &Self::path(path))?;
        Ok(body
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }
}
