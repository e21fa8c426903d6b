//! Checks every `xenblk::abi` struct layout and constant against the real Xen
//! public headers (Debian `libxen-dev`, `/usr/include/xen`).
//!
//! The test generates a C program that prints, for every check, the value
//! the C compiler computes (`sizeof`, `_Alignof`, `offsetof`, a macro or enum
//! value, `__CONST_RING_SIZE`), compiles it with the system `cc`, runs it and
//! compares each value with the Rust side. It also scans `src/abi/*.rs` so
//! that a struct, field or constant added there without a check here fails.
//!
//! Without the headers (or `cc`) the test is skipped with a loud warning,
//! unless `XENBLK_REQUIRE_HEADERS=1` (as `make layout` sets), when it fails.
//! `XENBLK_XEN_INCLUDE` names an include directory holding `xen/` other than
//! `/usr/include`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use xenblk::abi::blkif::*;
use xenblk::abi::event_channel::*;
use xenblk::abi::grant::*;
use xenblk::abi::hvm::*;
use xenblk::abi::memory::*;
use xenblk::abi::sched::*;
use xenblk::abi::shared_info::*;
use xenblk::abi::sring::*;
use xenblk::abi::xen::*;
use xenblk::abi::xs_wire::msg_type::*;
use xenblk::abi::xs_wire::*;
use xenblk::hal::GrantEntry;

/// One value computed on both sides.
struct Check {
    /// What is compared, for the mismatch message.
    what: String,
    /// A C expression of integer type.
    c_expr: String,
    /// The Rust value.
    rust: i128,
}

/// All checks, and which Rust items they cover.
#[derive(Default)]
struct Checks {
    list: Vec<Check>,
    /// `Struct.field` and `Struct` names covered by a layout check.
    structs: BTreeSet<String>,
    /// Rust constant names covered.
    consts: BTreeSet<String>,
}

impl Checks {
    fn push(&mut self, what: String, c_expr: String, rust: i128) {
        self.list.push(Check { what, c_expr, rust });
    }

    fn constant(&mut self, rust_name: &str, c_expr: &str, rust: i128) {
        self.consts.insert(rust_name.to_string());
        self.push(
            format!("constant {rust_name} (C `{c_expr}`)"),
            c_expr.to_string(),
            rust,
        );
    }
}

/// `size_of` a field's type, from an accessor closure (no value needed).
fn field_size<T, F>(_: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Size, alignment, and every listed field's offset and size.
macro_rules! layout {
    ($checks:ident, $rust:ident, $cty:literal, { $($rf:ident : $cf:literal),* $(,)? }) => {{
        let rname = stringify!($rust);
        $checks.structs.insert(rname.to_string());
        $checks.push(
            format!("{} (Rust {rname}): size", $cty),
            format!("sizeof({})", $cty),
            size_of::<$rust>() as i128,
        );
        $checks.push(
            format!("{} (Rust {rname}): alignment", $cty),
            format!("_Alignof({})", $cty),
            align_of::<$rust>() as i128,
        );
        fields!($checks, $rust, $cty, { $($rf: $cf),* });
    }};
}

/// Every listed field's offset and size.
macro_rules! fields {
    ($checks:ident, $rust:ident, $cty:literal, { $($rf:ident : $cf:literal),* $(,)? }) => {{
        let rname = stringify!($rust);
        $(
            $checks.structs.insert(format!("{rname}.{}", stringify!($rf)));
            $checks.push(
                format!("{} (Rust {rname}) field {} (Rust {}): offset", $cty, $cf, stringify!($rf)),
                format!("offsetof({}, {})", $cty, $cf),
                offset_of!($rust, $rf) as i128,
            );
            $checks.push(
                format!("{} (Rust {rname}) field {} (Rust {}): size", $cty, $cf, stringify!($rf)),
                format!("sizeof((({} *)0)->{})", $cty, $cf),
                field_size(|s: &$rust| &s.$rf) as i128,
            );
        )*
    }};
}

/// Constants whose C name is the Rust name.
macro_rules! consts {
    ($checks:ident, [$($name:ident),* $(,)?]) => {{
        $( $checks.constant(stringify!($name), stringify!($name), $name as i128); )*
    }};
}

fn all_checks() -> Checks {
    let mut c = Checks::default();

    // ----- io/blkif.h, io/ring.h ------------------------------------------------------
    layout!(c, BlkifRequestSegment, "struct blkif_request_segment", {
        gref: "gref", first_sect: "first_sect", last_sect: "last_sect",
    });
    layout!(c, BlkifRequest, "struct blkif_request", {
        operation: "operation", nr_segments: "nr_segments", handle: "handle", id: "id",
        sector_number: "sector_number", seg: "seg",
    });
    layout!(c, BlkifRequestDiscard, "struct blkif_request_discard", {
        operation: "operation", flag: "flag", handle: "handle", id: "id",
        sector_number: "sector_number", nr_sectors: "nr_sectors",
    });
    layout!(c, BlkifRequestIndirect, "struct blkif_request_indirect", {
        operation: "operation", indirect_op: "indirect_op", nr_segments: "nr_segments",
        id: "id", sector_number: "sector_number", handle: "handle",
        indirect_grefs: "indirect_grefs",
    });
    layout!(c, BlkifResponse, "struct blkif_response", {
        id: "id", operation: "operation", status: "status",
    });
    consts!(
        c,
        [
            BLKIF_OP_READ,
            BLKIF_OP_WRITE,
            BLKIF_OP_WRITE_BARRIER,
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_RESERVED_1,
            BLKIF_OP_DISCARD,
            BLKIF_OP_INDIRECT,
            BLKIF_MAX_SEGMENTS_PER_REQUEST,
            BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
            BLKIF_DISCARD_SECURE,
            BLKIF_RSP_EOPNOTSUPP,
            BLKIF_RSP_ERROR,
            BLKIF_RSP_OKAY,
            VDISK_CDROM,
            VDISK_REMOVABLE,
            VDISK_READONLY,
        ]
    );
    // `RequestSlot` is a request slot as words: the size of the largest
    // request layout, `struct blkif_request`.
    c.structs.insert("RequestSlot".into());
    c.push(
        "RequestSlot: size = sizeof(struct blkif_request)".into(),
        "sizeof(struct blkif_request)".into(),
        size_of::<RequestSlot>() as i128,
    );
    c.constant(
        "REQUEST_SLOT_WORDS",
        "sizeof(struct blkif_request) / 8",
        REQUEST_SLOT_WORDS as i128,
    );
    c.constant(
        "BLKIF_RING_SLOT_SIZE",
        "sizeof(union blkif_sring_entry)",
        BLKIF_RING_SLOT_SIZE as i128,
    );
    for order in 0..=4u32 {
        c.push(
            format!("blkif ring slots for order {order} (__CONST_RING_SIZE)"),
            format!("__CONST_RING_SIZE(blkif, 4096UL << {order})"),
            blkif_ring_slots(order) as i128,
        );
    }

    // `SringHeader` is `struct blkif_sring` up to `ring[]`; its `pad` covers
    // the `pvt` union and `__pad`.
    // (Its size is not sizeof(struct blkif_sring), which includes `ring[1]`,
    // but the offset of `ring`.)
    c.structs.insert("SringHeader".into());
    fields!(c, SringHeader, "struct blkif_sring", {
        req_prod: "req_prod", req_event: "req_event", rsp_prod: "rsp_prod",
        rsp_event: "rsp_event",
    });
    c.push(
        "struct blkif_sring (Rust SringHeader): header size = offsetof(ring)".into(),
        "offsetof(struct blkif_sring, ring)".into(),
        size_of::<SringHeader>() as i128,
    );
    c.structs.insert("SringHeader.pad".into());
    c.push(
        "struct blkif_sring (Rust SringHeader) field pvt (Rust pad): offset".into(),
        "offsetof(struct blkif_sring, pvt)".into(),
        offset_of!(SringHeader, pad) as i128,
    );
    c.push(
        "struct blkif_sring (Rust SringHeader) field pvt+__pad (Rust pad): size".into(),
        "offsetof(struct blkif_sring, ring) - offsetof(struct blkif_sring, pvt)".into(),
        field_size(|s: &SringHeader| &s.pad) as i128,
    );
    c.constant(
        "SRING_HEADER_SIZE",
        "offsetof(struct blkif_sring, ring)",
        SRING_HEADER_SIZE as i128,
    );

    // ----- io/xs_wire.h ----------------------------------------------------------------
    layout!(c, XsdSockmsg, "struct xsd_sockmsg", {
        ty: "type", req_id: "req_id", tx_id: "tx_id", len: "len",
    });
    layout!(c, XenstoreDomainInterface, "struct xenstore_domain_interface", {
        req: "req", rsp: "rsp", req_cons: "req_cons", req_prod: "req_prod",
        rsp_cons: "rsp_cons", rsp_prod: "rsp_prod", server_features: "server_features",
        connection: "connection", error: "error",
    });
    consts!(
        c,
        [
            XS_CONTROL,
            XS_DIRECTORY,
            XS_READ,
            XS_GET_PERMS,
            XS_WATCH,
            XS_UNWATCH,
            XS_TRANSACTION_START,
            XS_TRANSACTION_END,
            XS_INTRODUCE,
            XS_RELEASE,
            XS_GET_DOMAIN_PATH,
            XS_WRITE,
            XS_MKDIR,
            XS_RM,
            XS_SET_PERMS,
            XS_WATCH_EVENT,
            XS_ERROR,
            XS_IS_DOMAIN_INTRODUCED,
            XS_RESUME,
            XS_SET_TARGET,
            XS_RESET_WATCHES,
            XS_DIRECTORY_PART,
            XS_INVALID,
            XENSTORE_PAYLOAD_MAX,
            XENSTORE_ABS_PATH_MAX,
            XENSTORE_REL_PATH_MAX,
            XENSTORE_RING_SIZE,
            XENSTORE_CONNECTED,
            XENSTORE_RECONNECT,
            XENSTORE_SERVER_FEATURE_RECONNECTION,
            XENSTORE_SERVER_FEATURE_ERROR,
            XENSTORE_ERROR_NONE,
            XENSTORE_ERROR_COMM,
            XENSTORE_ERROR_RINGIDX,
            XENSTORE_ERROR_PROTO,
        ]
    );
    c.constant(
        "XSD_SOCKMSG_SIZE",
        "sizeof(struct xsd_sockmsg)",
        XSD_SOCKMSG_SIZE as i128,
    );

    // ----- io/console.h ------------------------------------------------------------------
    layout!(c, XenconsInterface, "struct xencons_interface", {
        in_: "in", out: "out", in_cons: "in_cons", in_prod: "in_prod",
        out_cons: "out_cons", out_prod: "out_prod",
    });
    c.constant(
        "XENCONS_IN_SIZE",
        "sizeof(((struct xencons_interface *)0)->in)",
        XENCONS_IN_SIZE as i128,
    );
    c.constant(
        "XENCONS_OUT_SIZE",
        "sizeof(((struct xencons_interface *)0)->out)",
        XENCONS_OUT_SIZE as i128,
    );

    // ----- grant_table.h -------------------------------------------------------------------
    layout!(c, GrantEntry, "struct grant_entry_v1", {
        flags: "flags", domid: "domid", frame: "frame",
    });
    layout!(c, GnttabQuerySize, "struct gnttab_query_size", {
        dom: "dom", nr_frames: "nr_frames", max_nr_frames: "max_nr_frames", status: "status",
    });
    layout!(c, GnttabSetupTable, "struct gnttab_setup_table", {
        dom: "dom", nr_frames: "nr_frames", status: "status", frame_list: "frame_list",
    });
    consts!(
        c,
        [
            GTF_invalid,
            GTF_permit_access,
            GTF_accept_transfer,
            GTF_transitive,
            GTF_type_mask,
            _GTF_readonly,
            GTF_readonly,
            _GTF_reading,
            GTF_reading,
            _GTF_writing,
            GTF_writing,
            GTF_PWT,
            GTF_PCD,
            GTF_PAT,
            GTF_sub_page,
            GTF_transfer_committed,
            GTF_transfer_completed,
            GNTTAB_NR_RESERVED_ENTRIES,
            GNTTAB_RESERVED_CONSOLE,
            GNTTAB_RESERVED_XENSTORE,
            GNTTABOP_map_grant_ref,
            GNTTABOP_unmap_grant_ref,
            GNTTABOP_setup_table,
            GNTTABOP_query_size,
            GNTTABOP_set_version,
            GNTTABOP_get_version,
            GNTST_okay,
            GNTST_general_error,
            GNTST_bad_domain,
            GNTST_bad_gntref,
            GNTST_permission_denied,
            GNTST_eagain,
        ]
    );

    // ----- event_channel.h -------------------------------------------------------------------
    layout!(c, EvtchnAllocUnbound, "struct evtchn_alloc_unbound", {
        dom: "dom", remote_dom: "remote_dom", port: "port",
    });
    layout!(c, EvtchnBindInterdomain, "struct evtchn_bind_interdomain", {
        remote_dom: "remote_dom", remote_port: "remote_port", local_port: "local_port",
    });
    layout!(c, EvtchnClose, "struct evtchn_close", { port: "port" });
    layout!(c, EvtchnSend, "struct evtchn_send", { port: "port" });
    layout!(c, EvtchnUnmask, "struct evtchn_unmask", { port: "port" });
    consts!(
        c,
        [
            EVTCHNOP_bind_interdomain,
            EVTCHNOP_bind_virq,
            EVTCHNOP_close,
            EVTCHNOP_send,
            EVTCHNOP_status,
            EVTCHNOP_alloc_unbound,
            EVTCHNOP_bind_vcpu,
            EVTCHNOP_unmask,
            EVTCHNOP_reset,
            EVTCHN_2L_NR_CHANNELS,
        ]
    );

    // ----- sched.h ---------------------------------------------------------------------------
    layout!(c, SchedShutdown, "struct sched_shutdown", { reason: "reason" });
    layout!(c, SchedPoll, "struct sched_poll", {
        ports: "ports", nr_ports: "nr_ports", timeout: "timeout",
    });
    consts!(
        c,
        [
            SCHEDOP_yield,
            SCHEDOP_block,
            SCHEDOP_shutdown,
            SCHEDOP_poll,
            SCHEDOP_remote_shutdown,
            SCHEDOP_shutdown_code,
            SCHEDOP_watchdog,
            SHUTDOWN_poweroff,
            SHUTDOWN_reboot,
            SHUTDOWN_suspend,
            SHUTDOWN_crash,
            SHUTDOWN_watchdog,
            SHUTDOWN_soft_reset,
        ]
    );

    // ----- memory.h ----------------------------------------------------------------------------
    layout!(c, XenAddToPhysmap, "struct xen_add_to_physmap", {
        domid: "domid", size: "size", space: "space", idx: "idx", gpfn: "gpfn",
    });
    consts!(
        c,
        [
            XENMEM_add_to_physmap,
            XENMEM_remove_from_physmap,
            XENMAPSPACE_shared_info,
            XENMAPSPACE_grant_table,
            XENMAPSPACE_gmfn,
            XENMAPSPACE_gmfn_range,
            XENMAPIDX_grant_table_status,
        ]
    );

    // ----- hvm/hvm_op.h, hvm/params.h, arch-x86/hvm/start_info.h --------------------------------
    layout!(c, XenHvmParam, "struct xen_hvm_param", {
        domid: "domid", pad: "pad", index: "index", value: "value",
    });
    layout!(c, HvmStartInfo, "struct hvm_start_info", {
        magic: "magic", version: "version", flags: "flags", nr_modules: "nr_modules",
        modlist_paddr: "modlist_paddr", cmdline_paddr: "cmdline_paddr",
        rsdp_paddr: "rsdp_paddr", memmap_paddr: "memmap_paddr",
        memmap_entries: "memmap_entries", reserved: "reserved",
    });
    layout!(c, HvmModlistEntry, "struct hvm_modlist_entry", {
        paddr: "paddr", size: "size", cmdline_paddr: "cmdline_paddr", reserved: "reserved",
    });
    layout!(c, HvmMemmapTableEntry, "struct hvm_memmap_table_entry", {
        addr: "addr", size: "size", ty: "type", reserved: "reserved",
    });
    consts!(
        c,
        [
            HVMOP_set_param,
            HVMOP_get_param,
            HVM_PARAM_CALLBACK_IRQ,
            HVM_PARAM_CALLBACK_IRQ_TYPE_MASK,
            HVM_PARAM_CALLBACK_TYPE_GSI,
            HVM_PARAM_CALLBACK_TYPE_PCI_INTX,
            HVM_PARAM_CALLBACK_TYPE_VECTOR,
            HVM_PARAM_STORE_PFN,
            HVM_PARAM_STORE_EVTCHN,
            HVM_PARAM_TIMER_MODE,
            HVM_PARAM_CONSOLE_PFN,
            HVM_PARAM_CONSOLE_EVTCHN,
            HVM_PARAM_VM_GENERATION_ID_ADDR,
            XEN_HVM_START_MAGIC_VALUE,
            XEN_HVM_MEMMAP_TYPE_RAM,
            XEN_HVM_MEMMAP_TYPE_RESERVED,
            XEN_HVM_MEMMAP_TYPE_ACPI,
            XEN_HVM_MEMMAP_TYPE_NVS,
            XEN_HVM_MEMMAP_TYPE_UNUSABLE,
            XEN_HVM_MEMMAP_TYPE_DISABLED,
            XEN_HVM_MEMMAP_TYPE_PMEM,
        ]
    );
    c.constant(
        "HVM_START_INFO_V0_SIZE",
        "offsetof(struct hvm_start_info, memmap_paddr)",
        HVM_START_INFO_V0_SIZE as i128,
    );

    // ----- xen.h: shared_info, vcpu_info ---------------------------------------------------------
    layout!(c, VcpuTimeInfo, "struct vcpu_time_info", {
        version: "version", pad0: "pad0", tsc_timestamp: "tsc_timestamp",
        system_time: "system_time", tsc_to_system_mul: "tsc_to_system_mul",
        tsc_shift: "tsc_shift", flags: "flags", pad1: "pad1",
    });
    layout!(c, ArchVcpuInfo, "struct arch_vcpu_info", { cr2: "cr2", pad: "pad" });
    layout!(c, VcpuInfo, "struct vcpu_info", {
        evtchn_upcall_pending: "evtchn_upcall_pending",
        evtchn_upcall_mask: "evtchn_upcall_mask", evtchn_pending_sel: "evtchn_pending_sel",
        arch: "arch", time: "time",
    });
    layout!(c, ArchSharedInfo, "struct arch_shared_info", {
        max_pfn: "max_pfn", pfn_to_mfn_frame_list_list: "pfn_to_mfn_frame_list_list",
        nmi_reason: "nmi_reason", p2m_cr3: "p2m_cr3", p2m_vaddr: "p2m_vaddr",
        p2m_generation: "p2m_generation",
    });
    layout!(c, SharedInfo, "struct shared_info", {
        vcpu_info: "vcpu_info", evtchn_pending: "evtchn_pending", evtchn_mask: "evtchn_mask",
        wc_version: "wc_version", wc_sec: "wc_sec", wc_nsec: "wc_nsec",
        wc_sec_hi: "wc_sec_hi", arch: "arch",
    });
    consts!(c, [XEN_LEGACY_MAX_VCPUS]);
    c.constant(
        "EVTCHN_WORDS",
        "sizeof(((struct shared_info *)0)->evtchn_pending) / sizeof(xen_ulong_t)",
        EVTCHN_WORDS as i128,
    );

    // ----- xen.h: hypercalls, domain ids ------------------------------------------------------
    consts!(
        c,
        [
            __HYPERVISOR_memory_op,
            __HYPERVISOR_set_timer_op,
            __HYPERVISOR_xen_version,
            __HYPERVISOR_console_io,
            __HYPERVISOR_grant_table_op,
            __HYPERVISOR_vcpu_op,
            __HYPERVISOR_sched_op,
            __HYPERVISOR_event_channel_op,
            __HYPERVISOR_physdev_op,
            __HYPERVISOR_hvm_op,
            DOMID_FIRST_RESERVED,
            DOMID_SELF,
            DOMID_IO,
            DOMID_XEN,
            DOMID_INVALID,
            CONSOLEIO_write,
            CONSOLEIO_read,
            SIF_PRIVILEGED,
            SIF_INITDOMAIN,
        ]
    );
    c
}

/// Rust constants with no counterpart in the headers.
const NOT_IN_HEADERS: &[&str] = &[
    // The x86 hypercall page layout is described in prose only.
    "HYPERCALL_ENTRY_SIZE",
];

/// The program printing `index value` for every check.
fn c_program(checks: &Checks) -> String {
    let mut s = String::from(
        "/* Generated by xenblk tests/abi_layout.rs. */\n\
         #define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__\n\
         #include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n\
         #include <xen/xen.h>\n#include <xen/grant_table.h>\n\
         #include <xen/event_channel.h>\n#include <xen/sched.h>\n\
         #include <xen/memory.h>\n#include <xen/hvm/hvm_op.h>\n\
         #include <xen/hvm/params.h>\n#include <xen/arch-x86/hvm/start_info.h>\n\
         #include <xen/io/ring.h>\n#include <xen/io/blkif.h>\n\
         #include <xen/io/xs_wire.h>\n#include <xen/io/console.h>\n\n\
         int main(void)\n{\n",
    );
    for (i, k) in checks.list.iter().enumerate() {
        // `what` may hold anything; keep it out of the C source except as a
        // comment-safe hint.
        let hint = k.what.replace("*/", "* /");
        writeln!(
            s,
            "    /* {hint} */\n    printf(\"%d %lld\\n\", {i}, (long long)({}));",
            k.c_expr
        )
        .unwrap();
    }
    s.push_str("    return 0;\n}\n");
    s
}

/// Whether the headers are present (or why not).
fn include_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("XENBLK_XEN_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    for h in [
        "xen/xen.h",
        "xen/io/blkif.h",
        "xen/io/ring.h",
        "xen/io/xs_wire.h",
        "xen/arch-x86/hvm/start_info.h",
    ] {
        if !dir.join(h).is_file() {
            return Err(format!("{} not found", dir.join(h).display()));
        }
    }
    Ok(dir)
}

fn skip_or_fail(why: &str) {
    if std::env::var("XENBLK_REQUIRE_HEADERS").as_deref() == Ok("1") {
        panic!("ABI layout check cannot run ({why}) and XENBLK_REQUIRE_HEADERS=1");
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! WARNING: xenblk ABI check against the Xen C headers was SKIPPED");
    eprintln!("!!! ({why}). Install libxen-dev and a C compiler, or run");
    eprintln!("!!! `make layout` (XENBLK_REQUIRE_HEADERS=1) to make this an error.");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
}

/// Compiles and runs the program; returns the value printed for each index.
fn run_c(include: &Path, program: &str) -> Result<HashMap<usize, i128>, String> {
    let dir = std::env::temp_dir().join(format!("xenblk-abi-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let src = dir.join("abi_layout.c");
    let exe = dir.join("abi_layout");
    std::fs::write(&src, program).map_err(|e| format!("write {}: {e}", src.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg("-std=gnu11")
        .arg("-Wall")
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run `{cc}`: {e}"))?;
    if !out.status.success() {
        panic!(
            "the C side does not compile against the headers (a name in abi differs from \
             the header?); source kept at {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = Command::new(&exe)
        .output()
        .map_err(|e| format!("run {}: {e}", exe.display()))?;
    assert!(
        run.status.success(),
        "{} failed: {:?}",
        exe.display(),
        run.status
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut values = HashMap::new();
    for line in String::from_utf8_lossy(&run.stdout).lines() {
        let (i, v) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad line from the C side: {line:?}"));
        values.insert(i.parse().unwrap(), v.parse().unwrap());
    }
    Ok(values)
}

/// Two integers agree if equal as 64-bit patterns (C prints everything as
/// `long long`; Rust constants may be unsigned 64-bit).
fn agree(c: i128, rust: i128) -> bool {
    c as u64 == rust as u64
}

#[test]
fn abi_matches_the_xen_headers() {
    let include = match include_dir() {
        Ok(d) => d,
        Err(why) => return skip_or_fail(&why),
    };
    let checks = all_checks();
    let values = match run_c(&include, &c_program(&checks)) {
        Ok(v) => v,
        Err(why) => return skip_or_fail(&why),
    };
    let mut bad = Vec::new();
    for (i, k) in checks.list.iter().enumerate() {
        match values.get(&i) {
            Some(&c) if agree(c, k.rust) => {}
            Some(&c) => bad.push(format!("{}: C = {c}, Rust = {}", k.what, k.rust)),
            None => bad.push(format!("{}: the C side printed nothing", k.what)),
        }
    }
    assert!(
        bad.is_empty(),
        "{} ABI mismatch(es) against {}/xen:\n  {}",
        bad.len(),
        include.display(),
        bad.join("\n  ")
    );
    eprintln!(
        "abi_layout: {} values agree with the C headers in {}/xen",
        checks.list.len(),
        include.display()
    );
}

/// `pub const NAME` and `pub struct Name { pub field: ... }` items of the
/// files under `src/abi`.
fn abi_items() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/abi");
    let mut consts = BTreeSet::new();
    let mut structs = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let t = line.trim_start();
            if let Some(name) = &current {
                if line.starts_with('}') {
                    current = None;
                } else if let Some(rest) = t.strip_prefix("pub ") {
                    if let Some((field, _)) = rest.split_once(':') {
                        structs.insert(format!("{name}.{}", field.trim()));
                    }
                }
            } else if let Some(rest) = t.strip_prefix("pub const ") {
                if !rest.starts_with("fn ") {
                    if let Some((name, _)) = rest.split_once(':') {
                        consts.insert(name.trim().to_string());
                    }
                }
            } else if let Some(rest) = line.strip_prefix("pub struct ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                structs.insert(name.clone());
                if rest.trim_end().ends_with('{') {
                    current = Some(name);
                }
            }
        }
    }
    (consts, structs)
}

#[test]
fn every_abi_item_has_a_check() {
    let checks = all_checks();
    let (consts, structs) = abi_items();
    assert!(consts.contains("BLKIF_OP_READ") && structs.contains("BlkifRequest.id"));
    let missing_consts: Vec<_> = consts
        .iter()
        .filter(|n| !checks.consts.contains(*n) && !NOT_IN_HEADERS.contains(&n.as_str()))
        .collect();
    let missing_structs: Vec<_> = structs.difference(&checks.structs).collect();
    assert!(
        missing_consts.is_empty() && missing_structs.is_empty(),
        "src/abi items without a check in tests/abi_layout.rs:\n  constants: {missing_consts:?}\n  \
         structs/fields: {missing_structs:?}"
    );
    // `hal::GrantEntry` lives outside src/abi but is checked too.
    for item in [
        "GrantEntry",
        "GrantEntry.flags",
        "GrantEntry.domid",
        "GrantEntry.frame",
    ] {
        assert!(checks.structs.contains(item), "{item} not checked");
    }
}

#[test]
fn agreement_is_modulo_64_bits_only() {
    assert!(agree(-1, u64::MAX as i128));
    assert!(agree(
        0xFF00_0000_0000_0000u64 as i64 as i128,
        0xFF00_0000_0000_0000
    ));
    assert!(!agree(-2, -1));
    assert!(!agree(65534, -2));
}
