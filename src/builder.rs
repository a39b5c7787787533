//! The one linear recipe from a validated config to a guest ready to run.
//! Every way to a running [`Vm`] goes through it:
//!
//! ```text
//!   1. image    read once, parsed and checked (untrusted input)
//!   2. devices  manifest devices bound (files, TAPs), accelerator plugins
//!   3. memory   boot: segments copied in | restore: snapshot pages mapped
//!   4. KVM      /dev/kvm (API 12), VM, one memory slot, the vCPU
//!   5. state    boot: page tables, GDT, boot info | restore: saved vCPU
//! ```
//!
//! Cold boot and `skiff snapshot` use [`build`] / [`build_image`]; restore
//! and pool workers (`snapshot/restore.rs`) use steps 1, 2 and 4 from here
//! and bring their own memory and state. Running is [`Vm::run`] (or
//! [`Vm::run_with`] with a hook, as `skiff snapshot` does).

use crate::config::RunConfig;
use crate::devices::attach::{AttachError, Bindings};
use crate::devices::Devices;
use crate::image::{self, Image, ImageError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vmm::Vm;
use guest_abi::manifest::MftEntry;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use std::path::Path;
use thiserror::Error;

/// The KVM API version skiff is written against (the only one Linux has).
const KVM_API_VERSION: i32 = 12;

/// Why a guest could not be built. Image errors name the file.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}: {err}")]
    Image { path: String, err: ImageError },
    #[error(transparent)]
    Attach(#[from] AttachError),
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
    let bytes = read_image(&cfg.kernel, cfg.mem.bytes())?;
    build_image(cfg, &bytes)
}

/// [`build`] from the image's bytes, already read from `cfg.kernel` (so
/// a caller that also needs them, as `skiff snapshot` does, reads once).
pub fn build_image(cfg: &RunConfig, bytes: &[u8]) -> Result<Vm, BuildError> {
    // 1. The image: untrusted, fully checked before anything else happens.
    let mem_size = cfg.mem.bytes();
    let img = parse_image(&cfg.kernel, bytes, mem_size)?;
    // 2. Devices and accelerators, before the guest's first instruction.
    let (devices, manifest) = attach(&img, &cfg.devices, &cfg.accel)?;
    let features = guest_abi::skiff::SKIFF_FEATURE_EXT
        | guest_abi::skiff::SKIFF_FEATURE_FUNCTION
        | guest_abi::skiff::SKIFF_FEATURE_RESP_HEAD
        | guest_abi::skiff::SKIFF_FEATURE_REQ_NEXT
        | devices
            .accel
            .as_ref()
            .map_or(0, |_| guest_abi::skiff::SKIFF_FEATURE_ACCEL);

    // 3. Guest memory, lazily backed; copy the segments in, then make text
    //    and rodata read-only.
    let mut mem = GuestMemory::new(mem_size)?;
    img.load(&mem)
        .map_err(|err| image_error(&cfg.kernel, err))?;
    for s in img.segments.iter().filter(|s| !s.writable) {
        mem.protect(s.start, s.end).map_err(BuildError::Protect)?;
    }

    // 4. KVM.
    let mut vm = machine(
        mem,
        devices,
        crate::vcpu::GuestCpuid::Template(cfg.cpu_template),
    )?;

    // 5. Boot state: page tables, GDT, boot info, manifest, command line.
    let tsc_hz = vm.vcpu.tsc_hz()?;
    let boot = memory::write_boot_state(
        &vm.mem,
        img.entry,
        img.kernel_end,
        tsc_hz,
        features,
        &manifest,
        &cfg.cmdline,
    )
    .map_err(BuildError::Layout)?;
    vm.vcpu.set_boot_state(&boot, &vm.mem)?;

    // 6. The request: this process's stdio and Http_* variables.
    vm.take_request(crate::devices::function::Function::from_env());
    Ok(vm)
}

/// Step 1a: the image file's bytes.
pub(crate) fn read_image(path: &Path, mem_size: u64) -> Result<Vec<u8>, BuildError> {
    image::read_file_for(path, mem_size).map_err(|err| image_error(path, err))
}

/// Step 1b: the image checked for a guest of `mem_size` bytes.
pub(crate) fn parse_image<'a>(
    path: &Path,
    bytes: &'a [u8],
    mem_size: u64,
) -> Result<Image<'a>, BuildError> {
    Image::parse(bytes, mem_size).map_err(|err| image_error(path, err))
}

fn image_error(path: &Path, err: ImageError) -> BuildError {
    BuildError::Image {
        path: path.display().to_string(),
        err,
    }
}

/// Step 2: every manifest device bound (backing files and TAPs opened,
/// the guest's manifest copy filled in) and the accelerator runtime
/// started when the operator enabled it.
pub(crate) fn attach(
    img: &Image,
    bindings: &Bindings,
    accel: &crate::accel::config::AccelConfig,
) -> Result<(Devices, Vec<MftEntry>), BuildError> {
    let (mut devices, manifest) = crate::devices::attach::attach(&img.manifest, bindings)?;
    devices.console = crate::devices::console::Console::for_image(img.function);
    devices.accel = crate::accel::Accel::build(accel)?;
    Ok((devices, manifest))
}

/// Step 4, the same for every path: /dev/kvm, the VM, guest memory as its
/// one slot at GPA 0, and vCPU 0 (its state is the caller's step 5).
pub(crate) fn machine(
    mem: GuestMemory,
    devices: Devices,
    cpu: crate::vcpu::GuestCpuid,
) -> Result<Vm, BuildError> {
    let kvm = Kvm::new().map_err(BuildError::KvmOpen)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(BuildError::KvmVersion(version));
    }
    let vm = kvm.create_vm().map_err(BuildError::CreateVm)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.size(),
        userspace_addr: mem.host_base() as u64,
    };
    // SAFETY: the region is our own live mapping of `mem.size()` bytes, and
    // `mem` is moved into the Vm next to the VM fd, so it outlives the slot.
    unsafe { vm.set_user_memory_region(region) }.map_err(BuildError::MemoryRegion)?;
    let vcpu = Vcpu::new(&kvm, &vm, cpu)?;
    Ok(Vm {
        vcpu,
        mem,
        devices,
        vm,
        kvm,
        resume: None,
    })
}

#[cfg(test)]
mod tests {
    /// Every `SKIFF_FEATURE_*` bit of guest-abi is offered by the builder
    /// and defined in the C header: a new hypercall's feature bit left out
    /// of either would go unnoticed (guests would think the host lacks
    /// it). docs/architecture.md, "A hypercall".
    #[test]
    fn every_feature_bit_is_offered_and_in_the_c_header() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        let (abi, header) = (
            read("guest-abi/src/skiff.rs"),
            read("guest-abi/include/skiff_hvt.h"),
        );
        let builder = read("src/builder.rs");
        let names: Vec<&str> = abi
            .lines()
            .filter_map(|l| l.strip_prefix("pub const SKIFF_FEATURE_"))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(names.len() >= 5, "{names:?}");
        for n in names {
            let name = format!("SKIFF_FEATURE_{n}");
            assert!(
                builder.contains(&format!("skiff::{name}")),
                "builder does not offer {name}"
            );
            assert!(
                header.contains(&format!("#define {name} ")),
                "skiff_hvt.h lacks {name}"
            );
        }
    }
}
