//! Unit tests of the runtime without KVM: guest memory is a plain
//! mapping, requests are written into it as a guest would.

use super::plugins::{cpu::Cpu, opencl, Plugin, PluginError};
use super::*;
use crate::memory::{Gpa, GuestMemory};

/// A plugin that only records its type and ops.
#[derive(Debug)]
struct Fake {
    name: &'static str,
    kind: u32,
    ops: &'static [u8],
}

impl Plugin for Fake {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> u32 {
        self.kind
    }
    fn implements(&self, op: u8) -> bool {
        self.ops.contains(&op)
    }
    /// Selection only: never run.
    fn run(&mut self, _: &mut Op<'_>, _: &plugins::OpContext<'_>) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
}

fn fakes() -> Vec<Box<dyn Plugin>> {
    let f = |name, kind, ops| Box::new(Fake { name, kind, ops }) as Box<dyn Plugin>;
    vec![
        f("gpu-sgemm", PLUGIN_GPU, &[op::NOOP, op::BLAS_SGEMM][..]),
        f("fpga", PLUGIN_FPGA, &[op::NOOP, op::MINMAX][..]),
        f(
            "cpu",
            PLUGIN_CPU | PLUGIN_SOFTWARE,
            &[op::NOOP, op::BLAS_SGEMM, op::MINMAX][..],
        ),
    ]
}

#[test]
fn selection_rule() {
    let p = fakes();
    let name = |hint, op| select(&p, hint, op).map(|i| p[i].name());
    // No hint: the first plugin implementing the op, in operator order.
    assert_eq!(name(0, op::NOOP), Some("gpu-sgemm"));
    assert_eq!(name(0, op::MINMAX), Some("fpga"));
    // A hint picks the first plugin of that type implementing the op...
    assert_eq!(name(PLUGIN_CPU, op::NOOP), Some("cpu"));
    assert_eq!(name(PLUGIN_FPGA, op::NOOP), Some("fpga"));
    assert_eq!(name(PLUGIN_SOFTWARE, op::BLAS_SGEMM), Some("cpu"));
    assert_eq!(name(PLUGIN_FPGA | PLUGIN_CPU, op::BLAS_SGEMM), Some("cpu"));
    // ...else the first implementing it at all.
    assert_eq!(name(PLUGIN_FPGA, op::BLAS_SGEMM), Some("gpu-sgemm"));
    assert_eq!(name(PLUGIN_GPU, op::MINMAX), Some("fpga"));
    assert_eq!(name(PLUGIN_ALL, op::MINMAX), Some("fpga"));
    // Nobody implements EXEC here.
    assert_eq!(name(0, op::EXEC), None);
    assert_eq!(select(&[], 0, op::NOOP), None);
}

/// Guest memory with a bump allocator, as a guest would lay out buffers.
struct Guest {
    mem: GuestMemory,
    next: u64,
}

impl Guest {
    fn new() -> Self {
        Self {
            mem: GuestMemory::new(16 << 20).unwrap(),
            next: 0x10_0000,
        }
    }
    fn put(&mut self, bytes: &[u8]) -> u64 {
        let at = self.next;
        self.mem.write_bytes(bytes, Gpa(at)).unwrap();
        self.next = (at + bytes.len() as u64 + 15) & !15;
        at
    }
    fn arg(&mut self, ty: u32, bytes: &[u8]) -> AccelArg {
        AccelArg {
            gpa: self.put(bytes),
            size: bytes.len() as u64,
            ty,
            custom: 0,
        }
    }
    fn args(&mut self, a: &[AccelArg]) -> u64 {
        let bytes: Vec<u8> = a
            .iter()
            .flat_map(|d| {
                let mut v = d.gpa.to_le_bytes().to_vec();
                v.extend(d.size.to_le_bytes());
                v.extend(d.ty.to_le_bytes());
                v.extend(d.custom.to_le_bytes());
                v
            })
            .collect();
        self.put(&bytes)
    }
    fn floats(&mut self, ty: u32, v: &[f32]) -> AccelArg {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.arg(ty, &b)
    }
    fn read_floats(&self, d: &AccelArg) -> Vec<f32> {
        let mut b = vec![0u8; d.size as usize];
        self.mem.read_bytes(&mut b, Gpa(d.gpa)).unwrap();
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// Row-major reference: C = alpha*A*B + beta*C with strides.
#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let s: f32 = (0..k).map(|p| a[i * lda + p] * b[p * ldb + j]).sum();
            c[i * ldc + j] = alpha * s + beta * c[i * ldc + j];
        }
    }
}

/// A full sgemm request through `Accel::handle`, with row strides wider
/// than the rows; returns the result matrix and the request.
fn sgemm_via_handle(
    accel: &mut Accel,
    session: u32,
    hint_dims: (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>, HcAccel) {
    let (m, n, k) = hint_dims;
    let (lda, ldb, ldc) = (k + 3, n + 1, n + 2);
    let int = |x: usize| ((x * 7919) % 13) as f32 - 6.0;
    let a: Vec<f32> = (0..(m - 1) * lda + k).map(int).collect();
    let b: Vec<f32> = (0..(k - 1) * ldb + n).map(|x| int(x + 5)).collect();
    let c0: Vec<f32> = (0..(m - 1) * ldc + n).map(|x| int(x + 11)).collect();
    let mut g = Guest::new();
    let i64s = |g: &mut Guest, v: usize| g.arg(arg::INT64, &(v as i64).to_le_bytes());
    let read = [
        g.arg(arg::UINT8, &[op::BLAS_SGEMM]),
        i64s(&mut g, m),
        i64s(&mut g, n),
        i64s(&mut g, k),
        g.arg(arg::FLOAT32, &2f32.to_le_bytes()),
        g.floats(arg::FLOAT32_ARRAY, &a),
        i64s(&mut g, lda),
        g.floats(arg::FLOAT32_ARRAY, &b),
        i64s(&mut g, ldb),
        g.arg(arg::FLOAT32, &(-1f32).to_le_bytes()),
        i64s(&mut g, ldc),
    ];
    let c = g.floats(arg::FLOAT32_ARRAY, &c0);
    let mut req = HcAccel {
        cmd: CMD_GENOP,
        session,
        read_args: g.args(&read),
        nr_read: read.len() as u32,
        write_args: g.args(&[c]),
        nr_write: 1,
        ..HcAccel::default()
    };
    accel.handle(&g.mem, &mut req);
    let mut want = c0.clone();
    reference(m, n, k, 2.0, &a, lda, &b, ldb, -1.0, &mut want, ldc);
    (g.read_floats(&c), want, req)
}

fn session(accel: &mut Accel, hint: u32) -> u32 {
    let mem = GuestMemory::new(2 << 20).unwrap();
    let mut req = HcAccel {
        cmd: CMD_SESSION_INIT,
        flags: hint,
        ..HcAccel::default()
    };
    accel.handle(&mem, &mut req);
    assert_eq!(req.ret, OK);
    req.session
}

#[test]
fn cpu_sgemm_with_strides_matches_the_reference() {
    let mut accel = Accel::with_plugins(vec![Box::new(Cpu)]);
    let s = session(&mut accel, 0);
    for dims in [(1, 1, 1), (5, 7, 3), (33, 17, 40)] {
        let (got, want, req) = sgemm_via_handle(&mut accel, s, dims);
        assert_eq!(req.ret, OK, "{dims:?}");
        assert_eq!(req.plugin, PLUGIN_CPU | PLUGIN_SOFTWARE);
        // Exact: small integers; padding between rows untouched.
        assert_eq!(got, want, "{dims:?}");
    }
}

/// The OpenCL tests run one at a time (pocl in one process, two threads).
static OPENCL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn opencl_sgemm_with_strides_matches_the_reference() {
    let _one = OPENCL.lock().unwrap_or_else(|e| e.into_inner());
    let ocl = opencl::OpenCl::new().expect("pocl is installed here (pocl-opencl-icd)");
    let mut accel = Accel::with_plugins(vec![Box::new(ocl)]);
    let s = session(&mut accel, 0);
    for dims in [(1, 1, 1), (5, 7, 3), (33, 17, 40), (64, 64, 64)] {
        let (got, want, req) = sgemm_via_handle(&mut accel, s, dims);
        assert_eq!(req.ret, OK, "{dims:?}");
        assert_eq!(req.plugin & PLUGIN_GENERIC, PLUGIN_GENERIC);
        assert_eq!(got, want, "{dims:?}");
    }
}

#[test]
fn an_opencl_build_failure_is_eproto_with_the_log() {
    let _one = OPENCL.lock().unwrap_or_else(|e| e.into_inner());
    let ocl = opencl::OpenCl::new().expect("pocl");
    let err = ocl.build_source("__kernel void broken( { }").unwrap_err();
    assert_eq!(err.errno(), EPROTO);
    let msg = err.to_string();
    assert!(msg.starts_with("opencl: program build:"), "{msg}");
    assert!(msg.contains("CL_BUILD_PROGRAM_FAILURE"), "{msg}");
}

#[test]
fn sessions_and_resources_are_capped() {
    let mut accel = Accel::with_plugins(vec![]);
    let ids: Vec<u32> = (0..SESSIONS_MAX).map(|_| session(&mut accel, 0)).collect();
    let mem = GuestMemory::new(2 << 20).unwrap();
    let mut req = HcAccel {
        cmd: CMD_SESSION_INIT,
        ..HcAccel::default()
    };
    accel.handle(&mem, &mut req);
    assert_eq!(req.ret, ENOMEM);
    let mut rel = HcAccel {
        cmd: CMD_SESSION_RELEASE,
        session: ids[3],
        ..HcAccel::default()
    };
    accel.handle(&mem, &mut rel);
    assert_eq!(rel.ret, OK);
    accel.handle(&mem, &mut rel);
    assert_eq!(rel.ret, ENOENT);

    // Resources: the count cap, then the bytes are freed with the session.
    let mut g = Guest::new();
    let blob = g.arg(arg::BUFFER, &[7u8; 1000]);
    let read = g.args(&[blob]);
    let s = ids[0];
    let mut reg = HcAccel {
        cmd: CMD_RESOURCE_REGISTER,
        session: s,
        flags: RESOURCE_DATA,
        read_args: read,
        nr_read: 1,
        ..HcAccel::default()
    };
    for _ in 0..RESOURCES_MAX {
        accel.handle(&g.mem, &mut reg);
        assert_eq!(reg.ret, OK);
    }
    assert_eq!(accel.resources(s).count(), RESOURCES_MAX);
    assert_eq!(accel.reg.bytes(), 1000 * RESOURCES_MAX as u64);
    accel.handle(&g.mem, &mut reg);
    assert_eq!(reg.ret, ENOMEM);
    let mut rel = HcAccel {
        cmd: CMD_SESSION_RELEASE,
        session: s,
        ..HcAccel::default()
    };
    accel.handle(&g.mem, &mut rel);
    assert_eq!(rel.ret, OK);
    assert_eq!(accel.reg.bytes(), 0);
    assert_eq!(accel.resources(s).count(), 0);
}

#[test]
fn a_plugin_failure_maps_to_its_errno() {
    assert_eq!(PluginError::Unsupported.errno(), ENOTSUP);
    assert_eq!(PluginError::NotFound.errno(), ENOENT);
    assert_eq!(PluginError::Invalid.errno(), EINVAL);
}

#[test]
fn flags_parse() {
    use config::AccelFlags;
    use plugins::PluginKind::*;
    let a = |accel: Option<&str>| AccelFlags {
        accel: accel.map(String::from),
        ..AccelFlags::default()
    };
    assert_eq!(
        a(Some("cuda,opencl,cpu"))
            .into_config(None)
            .unwrap()
            .plugins,
        Some(vec![Cuda, OpenCl, Cpu])
    );
    assert_eq!(
        a(None)
            .into_config(Some("cpu:opencl".into()))
            .unwrap()
            .plugins,
        Some(vec![Cpu, OpenCl])
    );
    assert_eq!(a(None).into_config(None).unwrap().plugins, None);
    assert!(a(Some("cpu,gpu")).into_config(None).is_err());
}

/// The cpu plugin is the reference: it serves exactly the ops of
/// `ops::OPS`, so a new op it does not list in `runs!` fails here (the
/// compiler sees only that each listed op has its `Runs` impl;
/// docs/architecture.md, "An accelerator op").
#[test]
fn the_cpu_plugin_implements_every_op_of_the_table() {
    use plugins::Plugin;
    for o in 0..=u8::MAX {
        assert_eq!(
            plugins::cpu::Cpu.implements(o),
            ops::name(o).is_some(),
            "op {o}"
        );
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_requests_never_panic_and_always_answer() {
    const MEM: u64 = 4 << 20;
    let mut g = Guest::new();
    g.mem = GuestMemory::new(MEM).unwrap();
    let mut accel = Accel::with_plugins(vec![Box::new(Cpu)]);
    let s = session(&mut accel, 0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Plausible values the descriptors may point at: op numbers, small
    // and huge dimensions, floats.
    let ops = [
        op::NOOP,
        op::EXEC,
        op::BLAS_SGEMM,
        op::MINMAX,
        op::IMAGE_CLASSIFY,
        200,
    ];
    let mut scalars: Vec<AccelArg> = ops.iter().map(|&o| g.arg(arg::UINT8, &[o])).collect();
    for v in [1i64, 3, 17, -1, 1 << 40, i64::MAX] {
        scalars.push(g.arg(arg::INT64, &v.to_le_bytes()));
    }
    for v in [1i32, 4, -2] {
        scalars.push(g.arg(arg::INT32, &v.to_le_bytes()));
    }
    scalars.push(g.arg(arg::FLOAT32, &1f32.to_le_bytes()));
    let arrays_at = g.next;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20_000 {
        let desc = |rng: &mut Rng| -> AccelArg {
            if rng.below(2) == 0 {
                let mut d = scalars[rng.below(scalars.len() as u64) as usize];
                if rng.below(8) == 0 {
                    d.ty = rng.below(32) as u32;
                }
                d
            } else {
                AccelArg {
                    gpa: match rng.below(4) {
                        0 => rng.next(),
                        1 => MEM - rng.below(64),
                        _ => arrays_at + rng.below(1 << 20) * 4,
                    },
                    size: match rng.below(4) {
                        0 => rng.next(),
                        _ => rng.below(4096) * 4,
                    },
                    ty: [
                        arg::FLOAT32_ARRAY,
                        arg::FLOAT64_ARRAY,
                        arg::STRING,
                        arg::BUFFER,
                    ][rng.below(4) as usize],
                    custom: 0,
                }
            }
        };
        let nr = rng.below(14) as usize;
        let mut read: Vec<AccelArg> = (0..nr).map(|_| desc(&mut rng)).collect();
        if !read.is_empty() && rng.below(2) == 0 {
            read[0] = scalars[rng.below(ops.len() as u64) as usize];
        }
        let nw = rng.below(4) as usize;
        let write: Vec<AccelArg> = (0..nw).map(|_| desc(&mut rng)).collect();
        let at = g.next;
        // Mostly the generic op; never releasing the session in use.
        let cmd = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5][rng.below(11) as usize];
        let mut req = HcAccel {
            cmd,
            session: if cmd == CMD_SESSION_RELEASE || rng.below(8) == 0 {
                rng.next() as u32 | 0x8000_0000
            } else {
                s
            },
            flags: rng.below(4) as u32,
            resource: rng.below(4) as u32,
            read_args: if rng.below(16) == 0 {
                rng.next()
            } else {
                g.args(&read)
            },
            write_args: g.args(&write),
            nr_read: if rng.below(16) == 0 {
                rng.next() as u32
            } else {
                nr as u32
            },
            nr_write: nw as u32,
            ret: 12345,
            plugin: 0,
        };
        g.next = at; // reuse the descriptor area
        accel.handle(&g.mem, &mut req);
        *seen.entry((req.cmd, req.ret)).or_insert(0) += 1;
        assert!(
            [OK, EINVAL, ENOTSUP, ENOENT, ENOMEM, EPROTO].contains(&req.ret),
            "ret {} for {req:?}",
            req.ret
        );
    }
    // The generator reaches success as well as every refusal.
    eprintln!("(cmd, ret): count = {seen:?}");
    for want in [
        (CMD_GENOP, OK),
        (CMD_GENOP, EINVAL),
        (CMD_GENOP, ENOTSUP),
        (CMD_GENOP, ENOENT),
    ] {
        assert!(seen.contains_key(&want), "{want:?} never seen: {seen:?}");
    }
}
