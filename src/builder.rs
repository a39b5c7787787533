//! The one linear recipe from a validated config to a guest ready to run:
//! image -> devices -> memory -> KVM VM -> vCPU -> boot state.

use crate::config::RunConfig;
use crate::image::{self, Image, ImageError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vmm::Vm;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use thiserror::Error;

/// Why a guest could not be built. Image errors name the file.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}: {err}")]
    Image { path: String, err: ImageError },
    #[error(transparent)]
    Attach(#[from] crate::devices::attach::AttachError),
    #[error("{0}")]
    Memory(#[from] MemoryError),
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM API version is {0}, skiff requires version 12")]
    KvmVersion(i32),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed: {0}")]
    MemoryRegion(kvm_ioctls::Error),
    #[error("cannot protect the image's read-only segments: {0}")]
    Protect(std::io::Error),
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("cannot lay out the boot area: {0}")]
    Layout(memory::OutOfRange),
    #[error("{0}")]
    Accel(#[from] crate::accel::AccelError),
}

/// Builds a guest from `cfg`, ready to [`Vm::run`].
pub fn build(cfg: &RunConfig) -> Result<Vm, BuildError> {
    let path = cfg.kernel.display().to_string();
    let img_err = |err| BuildError::Image {
        path: path.clone(),
        err,
    };

    // 1. The image: untrusted, fully checked before anything else happens.
    let bytes = image::read_file(&cfg.kernel).map_err(img_err)?;
    let mem_size = cfg.mem.bytes();
    let img = Image::parse(&bytes, mem_size).map_err(img_err)?;
    // Every manifest device bound: backing files and TAPs opened, the
    // guest's manifest copy filled in.
    let (mut devices, manifest) = crate::devices::attach::attach(&img.manifest, &cfg.devices)?;
    devices.console = crate::devices::console::Console::for_image(img.function);

    // 1b. Accelerator plugins start before the guest's first instruction.
    let accel = crate::accel::Accel::build(&cfg.accel)?;

    // 2. Guest memory, lazily backed; copy the segments in, then make text
    //    and rodata read-only.
    let mut mem = GuestMemory::new(mem_size)?;
    img.load(&mem).map_err(img_err)?;
    for s in img.segments.iter().filter(|s| !s.writable) {
        mem.protect(s.start, s.end).map_err(BuildError::Protect)?;
    }

    // 3. KVM: the VM, its one memory slot, the vCPU.
    let kvm = Kvm::new().map_err(BuildError::KvmOpen)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(BuildError::KvmVersion(version));
    }
    let vm = kvm.create_vm().map_err(BuildError::CreateVm)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: mem.host_base() as u64,
    };
    // SAFETY: the region is our own live mapping of `mem_size` bytes, and
    // `mem` is kept in the Vm next to the VM fd, so it outlives the slot.
    unsafe { vm.set_user_memory_region(region) }.map_err(BuildError::MemoryRegion)?;
    let mut vcpu = Vcpu::new(&kvm, &vm)?;

    // 4. Boot state: page tables, GDT, boot info, manifest, command line.
    let tsc_hz = vcpu.tsc_hz()?;
    let boot = memory::write_boot_state(
        &mem,
        img.entry,
        img.kernel_end,
        tsc_hz,
        guest_abi::skiff::SKIFF_FEATURE_EXT
            | guest_abi::skiff::SKIFF_FEATURE_FUNCTION
            | guest_abi::skiff::SKIFF_FEATURE_RESP_HEAD
            | guest_abi::skiff::SKIFF_FEATURE_REQ_NEXT
            | accel
                .as_ref()
                .map_or(0, |_| guest_abi::skiff::SKIFF_FEATURE_ACCEL),
        &manifest,
        &cfg.cmdline,
    )
    .map_err(BuildError::Layout)?;
    vcpu.set_boot_state(&boot)?;
    crate::bench::marks::mark(crate::bench::marks::Mark::KvmReady);

    devices.function = crate::devices::function::Function::from_env();
    crate::devices::function::widen_pipes();
    devices.accel = accel;
    Ok(Vm {
        vcpu,
        mem,
        devices,
        vm,
        kvm,
        resume: None,
    })
}
