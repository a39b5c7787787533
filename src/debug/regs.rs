//! vCPU registers in the shapes debuggers want: gdb's x86-64 register
//! block, and the lines of `monitor regs`. Plain conversions, no KVM calls.

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// gdb's order: rax rbx rcx rdx rsi rdi rbp rsp r8..r15.
pub fn gprs(r: &kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// The register block gdb reads (`g`).
pub fn to_gdb(r: &kvm_regs, s: &kvm_sregs, f: Option<&kvm_fpu>) -> X86_64CoreRegs {
    let mut g = X86_64CoreRegs {
        regs: gprs(r),
        eflags: r.rflags as u32,
        rip: r.rip,
        ..Default::default()
    };
    g.segments.cs = u32::from(s.cs.selector);
    g.segments.ss = u32::from(s.ss.selector);
    g.segments.ds = u32::from(s.ds.selector);
    g.segments.es = u32::from(s.es.selector);
    g.segments.fs = u32::from(s.fs.selector);
    g.segments.gs = u32::from(s.gs.selector);
    if let Some(f) = f {
        for (st, fpr) in g.st.iter_mut().zip(f.fpr.iter()) {
            st.copy_from_slice(&fpr[..10]);
        }
        g.fpu.fctrl = u32::from(f.fcw);
        g.fpu.fstat = u32::from(f.fsw);
        g.fpu.ftag = u32::from(f.ftwx);
        g.fpu.fop = u32::from(f.last_opcode);
        g.fpu.fioff = f.last_ip as u32;
        g.fpu.fooff = f.last_dp as u32;
        for (x, b) in g.xmm.iter_mut().zip(f.xmm.iter()) {
            *x = u128::from_le_bytes(*b);
        }
        g.mxcsr = f.mxcsr;
    }
    g
}

/// gdb's general registers (`G`, `set $rax = ...`) into `r`.
pub fn from_gdb(g: &X86_64CoreRegs, r: &mut kvm_regs) {
    let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15] = g.regs;
    *r = kvm_regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rbp,
        rsp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: g.rip,
        // The upper half of RFLAGS is reserved (zero).
        rflags: u64::from(g.eflags),
    };
}

/// gdb's SSE registers into `f` (the x87 stack stays as it is).
pub fn fpu_from_gdb(g: &X86_64CoreRegs, f: &mut kvm_fpu) {
    for (b, x) in f.xmm.iter_mut().zip(g.xmm.iter()) {
        *b = x.to_le_bytes();
    }
    f.mxcsr = g.mxcsr;
}

/// `monitor regs`: what gdb's x86-64 register set has no room for.
pub fn control_lines(s: &kvm_sregs) -> Vec<String> {
    vec![
        format!("cr0  0x{:016x}", s.cr0),
        format!("cr2  0x{:016x}", s.cr2),
        format!("cr3  0x{:016x}", s.cr3),
        format!("cr4  0x{:016x}", s.cr4),
        format!("cr8  0x{:016x}", s.cr8),
        format!("efer 0x{:016x}", s.efer),
        format!("fs_base 0x{:016x}", s.fs.base),
        format!("gs_base 0x{:016x}", s.gs.base),
        format!("gdt  base 0x{:x} limit 0x{:x}", s.gdt.base, s.gdt.limit),
        format!("idt  base 0x{:x} limit 0x{:x}", s.idt.base, s.idt.limit),
        format!("tr   0x{:04x}  ldt 0x{:04x}", s.tr.selector, s.ldt.selector),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_registers_round_trip_in_gdb_order() {
        let r = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rbp: 7,
            rsp: 8,
            r8: 9,
            r15: 16,
            rip: 0x100000,
            rflags: 0x202,
            ..Default::default()
        };
        let s = kvm_sregs::default();
        let g = to_gdb(&r, &s, None);
        assert_eq!(&g.regs[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((g.regs[8], g.regs[15]), (9, 16));
        assert_eq!((g.rip, g.eflags), (0x100000, 0x202));
        let mut back = kvm_regs::default();
        from_gdb(&g, &mut back);
        assert_eq!(back, r);
    }

    #[test]
    fn sse_registers_come_from_the_fpu_state() {
        let mut f = kvm_fpu {
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.xmm[3] = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_le_bytes();
        let g = to_gdb(&kvm_regs::default(), &kvm_sregs::default(), Some(&f));
        assert_eq!(g.xmm[3], 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        assert_eq!(g.mxcsr, 0x1f80);
        let mut f2 = kvm_fpu::default();
        fpu_from_gdb(&g, &mut f2);
        assert_eq!(f2.xmm[3], f.xmm[3]);
    }
}
