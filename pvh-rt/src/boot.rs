//! PVH entry: the Xen ELF notes, the 32-bit entry point, the boot page
//! tables, the switch to long mode, and the exception stubs.
//!
//! The PVH boot ABI (`arch-x86/hvm/start_info.h`, "Start of day structure
//! passed to PVH guests"): the loader enters `XEN_ELFNOTE_PHYS32_ENTRY` in
//! 32-bit protected mode with paging off, flat 4 GiB `cs`/`ds`/`es`/`ss`,
//! interrupts off, and `%ebx` = the physical address of `hvm_start_info`. The
//! GDT it used is not ours to keep, and `%esp` is undefined.
//!
//! What the entry does, without touching a stack until long mode:
//! 1. zero `.bss` (loaders already zero it; this also covers a warm restart);
//! 2. build page tables in `.bss` that identity-map the first 4 GiB with
//!    2 MiB pages, present + writable, so no access below 4 GiB can ever
//!    page-fault — Xen's special pages (xenstore, console) sit just below
//!    4 GiB. Nothing here depends on page faults: under nested SVM in QEMU
//!    TCG a guest `#PF` may see a wrong CR2 (see docs/LAB.md);
//! 3. load a GDT of our own, enable PAE, load CR3, set `EFER.LME`, enable
//!    paging, far-jump into the 64-bit code segment;
//! 4. load the data segments and the stack, and call
//!    `xenblk_pvh_rt_entry` (lib.rs) with the `hvm_start_info` address.

use core::arch::global_asm;

use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// `XEN_ELFNOTE_*` numbers (`xen/elfnote.h`) used below and by
/// [`entry!`](crate::entry) (which emits the guest's name and version).
const _: () = {
    assert!(NOTE_XEN_VERSION == 5 && NOTE_PHYS32_ENTRY == 18);
};
const NOTE_XEN_VERSION: u32 = 5;
const NOTE_PHYS32_ENTRY: u32 = 18;

// The ELF notes of the platform. Each is an Elf64_Nhdr (namesz, descsz,
// type), the name "Xen\0", then the descriptor, both padded to 4 bytes.
// PHYS32_ENTRY is a `.quad`: QEMU's PVH loader reads a 64-bit value from a
// 64-bit ELF (as Linux emits it), and Xen's libelf accepts 4 or 8 bytes.
global_asm!(
    r#"
    .section .note.xen, "a", @note
    .balign 4
    .long 4, 2f - 1f, {phys32}
    .asciz "Xen"
    .balign 4
1:  .quad pvh_start32
2:  .balign 4

    .long 4, 2f - 1f, {xen_version}
    .asciz "Xen"
    .balign 4
1:  .asciz "xen-3.0"
2:  .balign 4
    "#,
    phys32 = const NOTE_PHYS32_ENTRY,
    xen_version = const NOTE_XEN_VERSION,
    options(att_syntax)
);

/// GDT selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// GDT selector of the flat data segment.
const DATA_SELECTOR: u16 = 0x10;

// Page-table entry bits (Intel SDM vol. 3, 4.5): present, writable, and for
// a page-directory entry, PS (a 2 MiB page).
const PTE_PRESENT_WRITABLE: u32 = 0x3;
const PDE_2MIB: u32 = 0x83;
/// 4 GiB of 2 MiB pages.
const PD_ENTRIES: u32 = 2048;

global_asm!(
    r#"
    .section .text.pvh_start, "ax", @progbits
    .code32
    .globl pvh_start32
    .type pvh_start32, @function
pvh_start32:
    cld
    movl %ebx, %esi                     /* keep hvm_start_info in %esi */

    /* 1. zero .bss in 4-byte words (the linker script aligns both ends) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* 2. PML4[0] -> PDPT, PDPT[0..4] -> PD[0..4], PD = 2048 x 2 MiB */
    movl $boot_pdpt, %eax
    orl ${ptew}, %eax
    movl %eax, boot_pml4

    movl $boot_pd, %eax
    orl ${ptew}, %eax
    xorl %ecx, %ecx
1:  movl %eax, boot_pdpt(,%ecx,8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl ${pde}, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl ${npd}, %ecx
    jb 1b

    /* 3. GDT, PAE, CR3, EFER.LME, paging */
    lgdt boot_gdt_ptr
    movl %cr4, %eax
    orl $0x20, %eax                     /* CR4.PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx              /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                    /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax               /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    ljmpl ${cs64}, $pvh_start64

    .code64
pvh_start64:
    movw ${ds}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movabsq $__stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                     /* arg 0: hvm_start_info paddr */
    call xenblk_pvh_rt_entry
2:  cli
    hlt
    jmp 2b
    .size pvh_start32, . - pvh_start32

    .section .data.boot_gdt, "aw", @progbits
    .balign 16
boot_gdt:
    .quad 0                             /* null */
    .quad 0x00af9b000000ffff            /* 0x08: code, 64-bit, accessed */
    .quad 0x00cf93000000ffff            /* 0x10: data, flat, accessed */
boot_gdt_end:
    .balign 8
    .globl boot_gdt_ptr
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    "#,
    ptew = const PTE_PRESENT_WRITABLE,
    pde = const PDE_2MIB,
    npd = const PD_ENTRIES,
    cs64 = const CODE64_SELECTOR,
    ds = const DATA_SELECTOR,
    options(att_syntax)
);

// ----- exceptions ----------------------------------------------------------------

// One stub per CPU exception (vectors 0..32). The stubs push a zero error
// code where the CPU pushes none, then the vector, and call
// `xenblk_pvh_rt_exception` with a pointer to [vector, error code, rip, cs, rflags,
// rsp, ss]. Interrupts stay off for the whole run, so only exceptions can
// arrive here, and none is recoverable: the handler reports and shuts down.
global_asm!(
    r#"
    .section .text.exceptions, "ax", @progbits
    .code64
    .altmacro
    .macro EXC_STUB n
    .balign 16
exc_stub_\n:
    .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    pushq $0
    .endif
    pushq $\n
    jmp exc_common
    .endm

    .set i, 0
    .rept 32
    EXC_STUB %i
    .set i, i + 1
    .endr

exc_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call xenblk_pvh_rt_exception
    ud2

    .macro EXC_ADDR n
    .quad exc_stub_\n
    .endm
    .section .rodata.exc_stubs, "a", @progbits
    .balign 8
    .globl xenblk_pvh_rt_exc_stubs
xenblk_pvh_rt_exc_stubs:
    .set i, 0
    .rept 32
    EXC_ADDR %i
    .set i, i + 1
    .endr
    .noaltmacro
    "#,
    options(att_syntax)
);

extern "C" {
    /// The 32 exception stubs above.
    static xenblk_pvh_rt_exc_stubs: [u64; 32];
}

/// One 64-bit interrupt gate (Intel SDM vol. 3, 6.14.1).
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u32; 4]);

/// The IDT: exceptions only.
static IDT: spin::Once<[Gate; 32]> = spin::Once::new();

/// Installs an IDT whose every exception reports through
/// the crate's panic handler and shuts the domain down, so a bug is a
/// `xenblk-panic` line instead of a silent triple fault.
pub fn install_exception_handlers() {
    let idt = IDT.call_once(|| {
        core::array::from_fn(|v| {
            // SAFETY: `xenblk_pvh_rt_exc_stubs` is a 32-entry table of addresses
            // emitted above; reading it has no side effect.
            let addr = unsafe { xenblk_pvh_rt_exc_stubs[v] };
            let lo = addr as u32;
            Gate([
                (lo & 0xffff) | (u32::from(CODE64_SELECTOR) << 16),
                // present, DPL 0, 64-bit interrupt gate (type 0xE), IST 0
                (lo & 0xffff_0000) | 0x8e00,
                (addr >> 32) as u32,
                0,
            ])
        })
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(idt) - 1) as u16,
        base: VirtAddr::new(idt.as_ptr() as u64),
    };
    // SAFETY: the table is 'static, holds valid 64-bit gates with the code
    // selector of our own GDT, and every target is a stub above.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

/// What an exception stub passes to the exception handler.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// CPU exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Code segment.
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer at the exception.
    pub rsp: u64,
    /// Stack segment.
    pub ss: u64,
}
