//! `grant_table.h`: grant-entry flags, the `GNTTABOP_*` commands a guest
//! issues, and their argument structs (x86_64 layout).
//!
//! The version-1 grant entry itself is [`crate::hal::GrantEntry`] (atomics,
//! because the hypervisor writes `flags` concurrently); its layout is
//! asserted below against `struct grant_entry_v1`.
#![allow(non_upper_case_globals)]

use core::mem::{align_of, offset_of, size_of};

use crate::hal::GrantEntry;

// ----- grant_entry_v1.flags (section "Type of grant entry" / "Subflags") -------

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_invalid: u16 = 0;
/// `GTF_permit_access`: `domid` may map and access `frame`.
pub const GTF_permit_access: u16 = 1;
/// `GTF_accept_transfer`: `domid` may transfer a frame into `frame`.
pub const GTF_accept_transfer: u16 = 2;
/// `GTF_transitive`: a v2-only transitive grant.
pub const GTF_transitive: u16 = 3;
/// `GTF_type_mask`: the bits holding the grant type above.
pub const GTF_type_mask: u16 = 3;
/// `_GTF_readonly`: bit number of [`GTF_readonly`].
pub const _GTF_readonly: u16 = 2;
/// `GTF_readonly`: the grantee may only map the frame read-only.
pub const GTF_readonly: u16 = 1 << _GTF_readonly;
/// `_GTF_reading`: bit number of [`GTF_reading`].
pub const _GTF_reading: u16 = 3;
/// `GTF_reading`: set by Xen while the grantee has the frame mapped or is
/// copying from it.
pub const GTF_reading: u16 = 1 << _GTF_reading;
/// `_GTF_writing`: bit number of [`GTF_writing`].
pub const _GTF_writing: u16 = 4;
/// `GTF_writing`: set by Xen while the grantee has the frame mapped writable
/// or is copying into it.
pub const GTF_writing: u16 = 1 << _GTF_writing;
/// `GTF_PWT`: cache attribute, page write-through.
pub const GTF_PWT: u16 = 1 << 5;
/// `GTF_PCD`: cache attribute, page cache disable.
pub const GTF_PCD: u16 = 1 << 6;
/// `GTF_PAT`: cache attribute, PAT index bit.
pub const GTF_PAT: u16 = 1 << 7;
/// `GTF_sub_page`: a v2 sub-page grant.
pub const GTF_sub_page: u16 = 1 << 8;
/// `GTF_transfer_committed`: (transfer grants) Xen committed to the transfer.
pub const GTF_transfer_committed: u16 = 1 << 2;
/// `GTF_transfer_completed`: (transfer grants) the transfer finished.
pub const GTF_transfer_completed: u16 = 1 << 3;

bitflags::bitflags! {
    /// `grant_entry_v1.flags` of a `GTF_permit_access` entry, as typed
    /// flags: the type (low two bits) and the subflags above it. Bits this
    /// type does not name are kept ([`from_bits_retain`](Self::from_bits_retain)):
    /// the hypervisor owns the word as much as the guest does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GrantFlags: u16 {
        /// [`GTF_permit_access`] (the type field).
        const PERMIT_ACCESS = GTF_permit_access;
        /// [`GTF_readonly`].
        const READONLY = GTF_readonly;
        /// [`GTF_reading`] (set by the hypervisor).
        const READING = GTF_reading;
        /// [`GTF_writing`] (set by the hypervisor).
        const WRITING = GTF_writing;
        /// [`GTF_PWT`].
        const PWT = GTF_PWT;
        /// [`GTF_PCD`].
        const PCD = GTF_PCD;
        /// [`GTF_PAT`].
        const PAT = GTF_PAT;
        /// [`GTF_sub_page`].
        const SUB_PAGE = GTF_sub_page;
        // Every other bit is the hypervisor's or a later version's.
        const _ = !0;
    }
}

impl GrantFlags {
    /// The type field ([`GTF_type_mask`]): [`GTF_invalid`],
    /// [`GTF_permit_access`], [`GTF_accept_transfer`] or [`GTF_transitive`].
    pub const fn grant_type(self) -> u16 {
        self.bits() & GTF_type_mask
    }

    /// Whether the grantee maps or copies the frame right now.
    pub const fn in_use(self) -> bool {
        self.intersects(GrantFlags::READING.union(GrantFlags::WRITING))
    }
}

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries owned by the toolstack (console and
/// xenstore pages). Same value as [`crate::hal::GNTTAB_RESERVED`].
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// `GNTTAB_RESERVED_CONSOLE`: the console page's grant reference.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// `GNTTAB_RESERVED_XENSTORE`: the xenstore page's grant reference.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

// ----- enum grant_table_op -------------------------------------------------------

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
/// `GNTTABOP_setup_table`: (PV) get the frames of the grant table.
pub const GNTTABOP_setup_table: u32 = 2;
/// `GNTTABOP_query_size`: current and maximum grant-table frames.
pub const GNTTABOP_query_size: u32 = 6;
/// `GNTTABOP_set_version`: select grant-table version 1 or 2.
pub const GNTTABOP_set_version: u32 = 8;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_get_version: u32 = 10;

// ----- enum grant_status -----------------------------------------------------------

/// `GNTST_okay`.
pub const GNTST_okay: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_general_error: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_bad_domain: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_bad_gntref: i16 = -3;
/// `GNTST_permission_denied`.
pub const GNTST_permission_denied: i16 = -8;
/// `GNTST_eagain`.
pub const GNTST_eagain: i16 = -12;

/// `struct gnttab_query_size` (`GNTTABOP_query_size`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabQuerySize {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: u16,
    /// OUT: frames in use.
    pub nr_frames: u32,
    /// OUT: the most frames the domain may have.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

/// `struct gnttab_setup_table` (`GNTTABOP_setup_table`), interface version
/// >= 0x00040300 (`frame_list` is a handle to `xen_pfn_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GnttabSetupTable {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: u16,
    /// IN: number of frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// IN: `XEN_GUEST_HANDLE(xen_pfn_t)`, an array of `nr_frames` entries
    /// that Xen fills with frame numbers.
    pub frame_list: *mut u64,
}

impl GnttabQuerySize {
    /// The argument for querying this domain's grant-table size.
    pub fn new() -> Self {
        GnttabQuerySize {
            dom: crate::hal::DomId::SELF.0,
            ..Default::default()
        }
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

// `hal::GrantEntry` is `struct grant_entry_v1`.
const _: () = assert!(size_of::<GrantEntry>() == 8);
const _: () = assert!(align_of::<GrantEntry>() == 4);
const _: () = assert!(offset_of!(GrantEntry, flags) == 0);
const _: () = assert!(offset_of!(GrantEntry, domid) == 2);
const _: () = assert!(offset_of!(GrantEntry, frame) == 4);
const _: () = assert!(GNTTAB_NR_RESERVED_ENTRIES as usize == crate::hal::GNTTAB_RESERVED);

const _: () = assert!(size_of::<GnttabQuerySize>() == 16);
const _: () = assert!(offset_of!(GnttabQuerySize, dom) == 0);
const _: () = assert!(offset_of!(GnttabQuerySize, nr_frames) == 4);
const _: () = assert!(offset_of!(GnttabQuerySize, max_nr_frames) == 8);
const _: () = assert!(offset_of!(GnttabQuerySize, status) == 12);

const _: () = assert!(size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(offset_of!(GnttabSetupTable, dom) == 0);
const _: () = assert!(offset_of!(GnttabSetupTable, nr_frames) == 4);
const _: () = assert!(offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(offset_of!(GnttabSetupTable, frame_list) == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_bits_are_distinct_from_the_type() {
        for f in [GTF_readonly, GTF_reading, GTF_writing] {
            assert_eq!(f & GTF_type_mask, 0);
            assert!(f.is_power_of_two());
        }
        assert_eq!(GTF_permit_access & GTF_type_mask, GTF_permit_access);
        assert_eq!(GnttabQuerySize::new().dom, 0x7ff0);
    }
}
