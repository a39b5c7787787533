//! The floor for exec-to-exit: the least a KVM tender can do. Opens
//! /dev/kvm, creates a VM with one page of memory and one vCPU in real
//! mode, runs `out 0x10, al; hlt`, and exits at the OUT. No image, no
//! page tables, no CPUID. `skiff bench --compare target/release/examples/kvm_floor`
//! measures it the same way as skiff (it ignores its arguments).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

fn main() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // SAFETY: an anonymous private mapping of one page, checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // out 0x10, al; hlt
    let code = [0xe6u8, 0x10, 0xf4];
    // SAFETY: the page is ours and at least 3 bytes long.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.cast::<u8>(), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 4096,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (the process exits first).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_bindings::kvm_regs {
        rip: 0,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x10, _) => {}
        other => panic!("unexpected exit {other:?}"),
    }
}
