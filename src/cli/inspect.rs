//! `skiff inspect FILE`: what a snapshot records and whether this host can
//! restore it (src/snapshot/inspect.rs), or what an image declares: its
//! ABI and manifest, as `solo5-elftool query-manifest` shows it.

use super::refuse;
use crate::snapshot::format::{Header, Meta, KVM_PVM, MAGIC};
use crate::snapshot::inspect::{self, HostCheck};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// `skiff inspect FILE`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A snapshot (`skiff snapshot --out FILE`) or a .hvt image.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn main(prog: &str, a: InspectArgs) -> i32 {
    let mut head = [0u8; 8];
    let read = std::fs::File::open(&a.file).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut head)
    });
    let text = match read {
        Err(e) => return refuse(prog, &format_args!("{}: {e}", a.file.display())),
        Ok(_) if head == MAGIC => snapshot(&a),
        Ok(_) => image(&a),
    };
    match text {
        Ok(t) => {
            print!("{t}");
            0
        }
        Err(e) => refuse(prog, &e),
    }
}

fn snapshot(a: &InspectArgs) -> Result<String, String> {
    let (h, m) = inspect::read(&a.file).map_err(|e| e.to_string())?;
    let mut o = describe(&a.file.display().to_string(), &h, &m);
    let here = inspect::check_host(&h, &m).map_err(|e| e.to_string())?;
    host_lines(&mut o, &here);
    Ok(o)
}

fn describe(path: &str, h: &Header, m: &Meta) -> String {
    let mut o = String::new();
    let now = crate::devices::clock::now_ns();
    let age_s = (i128::from(now) - i128::from(h.saved_at_ns)) as f64 / 1e9;
    let sha: String = h.image_sha256.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(o, "snapshot {path}: format version {}", h.version);
    let _ = writeln!(o, "image sha256: {sha}");
    let _ = writeln!(
        o,
        "memory: {} MiB, {} saved pages in {} runs",
        h.mem_size >> 20,
        h.data_pages,
        m.runs.len()
    );
    let kvm = match m.kvm {
        KVM_PVM => "kvm_pvm",
        _ => "a standard KVM",
    };
    let boot = match m.boot_id.is_empty() {
        true => "unknown".into(),
        false => String::from_utf8_lossy(&m.boot_id).into_owned(),
    };
    let _ = writeln!(
        o,
        "made on: {kvm}, host boot {boot}, at {} s since the epoch ({age_s:.1} s ago)",
        h.saved_at_ns / 1_000_000_000
    );
    let _ = writeln!(o, "TSC: {} kHz", h.tsc_hz / 1000);
    let cpuid = crate::snapshot::vcpu::cpuid_from_meta(m);
    // Every feature bit it saw (all of them "missing" on an empty host);
    // named ones by name, the rest counted.
    let (named, other): (Vec<String>, Vec<String>) = crate::vcpu::missing_features(&cpuid, &[])
        .into_iter()
        .partition(|f| !f.starts_with("cpuid."));
    let _ = writeln!(
        o,
        "CPU features the guest saw: {} and {} more bits ({} CPUID leaves recorded)",
        named.join(" "),
        other.len(),
        m.cpuid.len()
    );
    let devices: Vec<String> = m
        .devices
        .iter()
        .map(|d| match d.kind {
            1 => format!("block {} ({} bytes, {}-byte blocks)", d.name, d.a, d.b),
            _ => {
                let mac = d.b.to_le_bytes();
                format!(
                    "net {} (MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, MTU {})",
                    d.name, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], d.a
                )
            }
        })
        .collect();
    let none = || "none".to_string();
    let devices = (!devices.is_empty()).then(|| devices.join("; "));
    let _ = writeln!(o, "devices: {}", devices.unwrap_or_else(none));
    let accel = h.host_features & guest_abi::skiff::SKIFF_FEATURE_ACCEL != 0;
    let _ = writeln!(o, "accelerators: {}", if accel { "yes" } else { "no" });
    let _ = writeln!(o, "command line: '{}'", String::from_utf8_lossy(&m.cmdline));
    if let Ok(s) = crate::snapshot::vcpu::from_meta(m) {
        let _ = writeln!(
            o,
            "vCPU: rip 0x{:x}, cr8 {}, efer 0x{:x}, {} MSRs",
            s.regs.rip,
            s.sregs.cr8,
            s.sregs.efer,
            s.msrs.len()
        );
    }
    o
}

fn host_lines(o: &mut String, here: &HostCheck) {
    let kvm = match here.kvm_pvm {
        Some(true) => " (kvm_pvm)",
        Some(false) => " (a standard KVM)",
        None => "",
    };
    match &here.verdict {
        Err(why) => {
            let _ = writeln!(o, "this host{kvm}: cannot restore it: {why}");
        }
        Ok(()) => {
            let clock = match here.clock_error_ns {
                Some(e) => format!(
                    "the guest's wall clock would be {} us off the host's (the host's own wall-clock adjustments since the snapshot: kvm_pvm keeps the host's TSC)",
                    e / 1000
                ),
                None => "skiff sets the guest's clock to the host's wall time".into(),
            };
            let _ = writeln!(o, "this host{kvm}: can restore it; {clock}");
            if let Some(ppm) = here.tsc_ppm.filter(|&p| p != 0) {
                let _ = writeln!(
                    o,
                    "this host's TSC runs {ppm} ppm off the snapshot's: so does the guest's clock"
                );
            }
        }
    }
}

fn image(a: &InspectArgs) -> Result<String, String> {
    let path = a.file.display().to_string();
    let bytes = crate::image::read_file(&a.file).map_err(|e| format!("{path}: {e}"))?;
    let img = crate::image::Image::parse(&bytes, crate::image::MAX_IMAGE_BYTES)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "image {path}: Solo5 hvt ABI version {}{}, entry 0x{:x}, {} segments up to 0x{:x}",
        guest_abi::HVT_ABI_VERSION,
        if img.function { ", a function" } else { "" },
        img.entry,
        img.segments.len(),
        img.kernel_end
    );
    let _ = writeln!(o, "manifest: {} devices", img.manifest.devices.len());
    for d in &img.manifest.devices {
        let _ = writeln!(o, "  {} {}", d.kind, d.name);
    }
    Ok(o)
}
