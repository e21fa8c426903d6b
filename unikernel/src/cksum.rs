//! The CRC that POSIX `cksum` prints (coreutils `cksum` without `-a`):
//! CRC-32/CKSUM, polynomial `0x04C11DB7`, most significant bit first, initial
//! value 0, over the data followed by its length in bytes (least significant
//! byte first, as few bytes as the length needs), and the result inverted.
//!
//! `verify` prints it for every region it leaves on a disk, so that dom0 can
//! compare with `dd if=<image> bs=512 skip=<sector> count=<count> | cksum`.
//!
//! Self-contained (core only) so that the host can test it on its own:
//! `rustc --edition 2021 --test unikernel/src/cksum.rs` (run by
//! `tests/unikernel-noxen.sh`), which also compares with the `cksum` binary.

/// The CRC-32/CKSUM generator polynomial (without its x^32 term).
const POLY: u32 = 0x04C1_1DB7;

/// `TABLE[b]` is the CRC register after shifting byte `b` through it.
const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ POLY
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// A running `cksum` over data given in pieces.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cksum {
    crc: u32,
    len: u64,
}

impl Cksum {
    /// An empty sum.
    pub const fn new() -> Cksum {
        Cksum { crc: 0, len: 0 }
    }

    fn byte(crc: u32, b: u8) -> u32 {
        (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize]
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.crc;
        for &b in data {
            crc = Self::byte(crc, b);
        }
        self.crc = crc;
        self.len += data.len() as u64;
    }

    /// Bytes added so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The value `cksum` prints for everything added.
    pub fn finish(&self) -> u32 {
        let mut crc = self.crc;
        let mut n = self.len;
        while n != 0 {
            crc = Self::byte(crc, n as u8);
            n >>= 8;
        }
        !crc
    }
}

/// `cksum` of `data` in one go.
pub fn cksum(data: &[u8]) -> u32 {
    let mut c = Cksum::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Values printed by coreutils `cksum`.
        assert_eq!(cksum(b""), 4294967295);
        assert_eq!(cksum(b"123456789"), 930766865);
        assert_eq!(cksum(b"a"), 1220704766);
        assert_eq!(cksum(&[0u8; 512]), 4135437457);
    }

    #[test]
    fn pieces_give_the_same_sum() {
        let data: std::vec::Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = cksum(&data);
        for cut in [0, 1, 255, 256, 4096, 5000] {
            let mut c = Cksum::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.finish(), whole, "cut at {cut}");
            assert_eq!(c.len(), 5000);
        }
    }

    /// Compares with the real `cksum` on lengths that need 1, 2 and 3 length
    /// bytes (skipped, and said so, when the binary is missing).
    #[test]
    fn agrees_with_the_cksum_binary() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        for len in [0usize, 1, 200, 511, 512, 4097, 70_000] {
            let data: std::vec::Vec<u8> = (0..len).map(|i| (i * 31 + (i >> 9)) as u8).collect();
            let child = Command::new("cksum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn();
            let Ok(mut child) = child else {
                std::eprintln!("cksum binary not found: comparison skipped");
                return;
            };
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(&data)
                .expect("write to cksum");
            let out = child.wait_with_output().expect("cksum ran");
            let text = std::string::String::from_utf8(out.stdout).expect("utf-8");
            let mut words = text.split_whitespace();
            let want: u32 = words.next().expect("crc").parse().expect("number");
            let want_len: usize = words.next().expect("len").parse().expect("number");
            assert_eq!(want_len, len);
            assert_eq!(cksum(&data), want, "length {len}");
        }
    }
}
