//! The executor: one thread owns the plugins (they are not `Send`, and a
//! GPU or the single-threaded CPU sgemm runs one op at a time anyway) and
//! runs every connection's ops through skiff's own decoders, selection
//! rule and plugins ([`Accel::run_op`]), and builds (and drops) the
//! classifiers and libraries clients send. Connections do their socket
//! I/O, protobuf work and model parsing in parallel and queue here.

use crate::accel::args::{Args, In, Out};
use crate::accel::config::AccelConfig;
use crate::accel::{ops, Accel, Errno};
use crate::vaccel::shm::Region;
use std::sync::{mpsc, Arc};

/// A client's argument, 8-byte aligned (f32/f64 arrays are used in
/// place, as guest memory is): the decoded bytes themselves when the
/// allocator aligned them (large buffers always are), else a copy.
#[derive(Debug)]
pub struct Buf {
    pub ty: u32,
    pub custom: u32,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Bytes(Vec<u8>),
    Words(Vec<u64>, usize),
    /// A span of the connection's shared region (checked in bounds,
    /// aligned, and disjoint from the request's other spans).
    Shared(Arc<Region>, u64, usize),
}

impl Buf {
    /// `bytes`, aligned; ENOMEM if a copy cannot be allocated.
    pub fn new(ty: u32, custom: u32, bytes: Vec<u8>) -> Result<Self, Errno> {
        if (bytes.as_ptr() as usize).is_multiple_of(8) {
            return Ok(Buf {
                ty,
                custom,
                data: Data::Bytes(bytes),
            });
        }
        let mut words = Vec::new();
        let n = bytes.len().div_ceil(8);
        words.try_reserve_exact(n).map_err(|_| libc::ENOMEM)?;
        words.resize(n, 0);
        let mut b = Buf {
            ty,
            custom,
            data: Data::Words(words, bytes.len()),
        };
        b.bytes_mut().copy_from_slice(&bytes);
        Ok(b)
    }

    /// A span of `region` (the caller checked it: see [`Data::Shared`]).
    pub fn shared(ty: u32, region: &Arc<Region>, off: u64, len: usize) -> Option<Self> {
        region.slice(off, len)?;
        Some(Buf {
            ty,
            custom: 0,
            data: Data::Shared(region.clone(), off, len),
        })
    }

    /// Where a shared buffer is in the region.
    pub fn shm_offset(&self) -> Option<u64> {
        match self.data {
            Data::Shared(_, off, _) => Some(off),
            _ => None,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Bytes(b) => b,
            Data::Shared(r, off, len) => r.slice(*off, *len).unwrap_or_default(),
            // SAFETY: `w` holds at least `len` initialised bytes.
            Data::Words(w, len) => unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), *len) },
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.data {
            Data::Bytes(b) => b,
            Data::Shared(r, off, len) => r.slice_mut(*off, *len).unwrap_or_default(),
            // SAFETY: as above, borrowed mutably.
            Data::Words(w, len) => unsafe {
                std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), *len)
            },
        }
    }

    /// The bytes, without a copy where they were not copied in.
    pub fn into_vec(self) -> Vec<u8> {
        match self.data {
            Data::Bytes(b) => b,
            Data::Words(..) | Data::Shared(..) => self.bytes().to_vec(),
        }
    }
}

/// One genop for the executor.
#[derive(Debug)]
pub struct Job {
    pub hint: u32,
    /// The session's classifier (see [`Accel::run_op`]).
    pub model: Option<String>,
    pub read: Vec<Buf>,
    pub write: Vec<Buf>,
}

/// A finished job: the result and the write buffers, filled.
#[derive(Debug)]
pub struct Done {
    pub result: Result<(), Errno>,
    pub write: Vec<Buf>,
}

/// Work for the executor thread, on its runtime.
type Task = Box<dyn FnOnce(&mut Accel) + Send>;

/// The queue into the executor.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::Sender<Task>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Executor")
    }
}

impl Executor {
    /// Starts the executor thread and its plugins; the build's error as
    /// one line (the operator's: a missing model or library).
    pub fn start(cfg: AccelConfig) -> Result<(Self, String), String> {
        let (tx, rx) = mpsc::channel::<Task>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("skiff-agent-exec".into())
            .spawn(move || {
                let mut accel = match Accel::build(&cfg) {
                    Ok(Some(a)) => a,
                    Ok(None) => return drop(ready_tx.send(Err("no plugins".to_string()))),
                    Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
                };
                let names: Vec<String> = accel.plugins().iter().map(|p| p.describe()).collect();
                let _ = ready_tx.send(Ok(names.join(", ")));
                for task in rx {
                    task(&mut accel);
                }
            })
            .map_err(|e| format!("cannot start the executor thread: {e}"))?;
        let plugins = ready_rx
            .recv()
            .map_err(|_| "the executor thread died".to_string())??;
        Ok((Executor { tx }, plugins))
    }

    /// Runs `f` on the executor's runtime and waits for it; `None` if
    /// the executor is gone.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Accel) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::channel();
        let task: Task = Box::new(move |a| drop(tx.send(f(a))));
        self.tx.send(task).ok()?;
        rx.recv().ok()
    }

    /// Runs `job` and waits for it.
    pub fn submit(&self, mut job: Job) -> Option<Done> {
        self.with(move |a| Done {
            result: run(a, &mut job),
            write: job.write,
        })
    }
}

fn run(accel: &mut Accel, job: &mut Job) -> Result<(), Errno> {
    let read: Vec<In<'_>> = job
        .read
        .iter()
        .map(|b| In {
            ty: b.ty,
            custom: b.custom,
            bytes: b.bytes(),
        })
        .collect();
    let write = job.write.iter_mut().map(|b| Out {
        ty: b.ty,
        custom: b.custom,
        bytes: b.bytes_mut(),
    });
    let mut args = Args::from_host(&read, write)?;
    let mut op = ops::decode(&mut args)?;
    accel.run_op(job.hint, job.model.as_deref(), &mut op)?;
    Ok(())
}
