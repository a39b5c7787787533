//! EXEC: the operator's host libraries (`--accel-lib=NAME=PATH`), opened
//! in the builder, and the call into one of their functions with vAccel's
//! convention `int f(struct vaccel_arg *in, size_t nr_in, struct
//! vaccel_arg *out, size_t nr_out)`.
//!
//! The guest names a library by the operator's NAME, never by path, and a
//! symbol that must be a function defined in that library itself: `dlsym`
//! alone would also find its dependencies' symbols (libc's `system`, ...).

use super::args::{In, Out, MAX};
use super::ops::Exec;
use super::plugins::PluginError;
use std::ffi::{c_int, c_void, CString};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// vAccel's `struct vaccel_arg` as the called function sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VaccelArg {
    pub buf: *mut c_void,
    pub size: usize,
    pub ty: u32,
    pub custom: u32,
}

type ExecFn = unsafe extern "C" fn(*mut VaccelArg, usize, *mut VaccelArg, usize) -> c_int;

/// A library the operator named that cannot be opened.
#[derive(Debug, Error)]
#[error("--accel-lib {name}={}: {}", path.display(), dl_reason(err))]
pub struct LibError {
    pub name: String,
    pub path: PathBuf,
    pub err: libloading::Error,
}

/// libloading's message says only "dlopen failed"; dlerror()'s reason
/// (no such file, wrong ELF class, an undefined symbol) is its source.
fn dl_reason(err: &libloading::Error) -> String {
    match std::error::Error::source(err) {
        Some(why) => format!("cannot load the library: {why}"),
        None => format!("cannot load the library: {err}"),
    }
}

#[derive(Debug)]
struct Lib {
    name: String,
    handle: *mut c_void,
    /// The library's own link map, to tell its symbols from its deps'.
    link_map: *mut c_void,
}

impl Drop for Lib {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `Library::into_raw` and is closed once.
        drop(unsafe { libloading::os::unix::Library::from_raw(self.handle) });
    }
}

/// The operator's libraries, by name.
#[derive(Debug, Default)]
pub struct Libraries {
    libs: Vec<Lib>,
}

const RTLD_DL_SYMENT: c_int = 1;
const RTLD_DL_LINKMAP: c_int = 2;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;

impl Libraries {
    /// Opens every library (RTLD_NOW: unresolved symbols fail here, not in
    /// a guest's call).
    pub fn open(named: &[(String, PathBuf)]) -> Result<Self, LibError> {
        let mut libs = Libraries::default();
        for (name, path) in named {
            libs.add(name, path)?;
        }
        Ok(libs)
    }

    /// Opens `path` as library `name` (RTLD_NOW, as [`Libraries::open`]).
    pub fn add(&mut self, name: &str, path: &Path) -> Result<(), LibError> {
        let err = |err| LibError {
            name: name.into(),
            path: path.into(),
            err,
        };
        // SAFETY: the operator vouches for the library (or, on an agent,
        // allowed its clients' libraries): loading it runs its
        // initialisers in skiff's process.
        let lib = unsafe {
            libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_LOCAL)
        }
        .map_err(err)?;
        let handle = lib.into_raw();
        let mut link_map: *mut c_void = std::ptr::null_mut();
        // SAFETY: `handle` is a live dlopen handle; RTLD_DI_LINKMAP writes
        // one pointer.
        unsafe {
            libc::dlinfo(
                handle,
                libc::RTLD_DI_LINKMAP,
                (&mut link_map as *mut *mut c_void).cast(),
            )
        };
        self.libs.push(Lib {
            name: name.into(),
            handle,
            link_map,
        });
        Ok(())
    }

    /// Closes library `name` (dlclose).
    pub fn remove(&mut self, name: &str) {
        self.libs.retain(|l| l.name != name);
    }

    /// The function `symbol` defined in library `name` itself.
    fn function(&self, name: &[u8], symbol: &[u8]) -> Result<ExecFn, PluginError> {
        let lib = self
            .libs
            .iter()
            .find(|l| l.name.as_bytes() == name)
            .ok_or(PluginError::NotFound)?;
        let sym = CString::new(symbol).map_err(|_| PluginError::Invalid)?;
        // SAFETY: live handle, NUL-terminated name.
        let addr = unsafe { libc::dlsym(lib.handle, sym.as_ptr()) };
        if addr.is_null() {
            return Err(PluginError::NotFound);
        }
        // SAFETY: Dl_info is plain pointers; all-zero is a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let mut owner: *mut c_void = std::ptr::null_mut();
        let mut entry: *mut c_void = std::ptr::null_mut();
        // SAFETY: `addr` came from dlsym; dladdr1 writes `info` and one
        // pointer (the owning link map, or the ELF symbol entry).
        let ok = unsafe {
            libc::dladdr1(addr, &mut info, &mut owner, RTLD_DL_LINKMAP) != 0
                && libc::dladdr1(addr, &mut info, &mut entry, RTLD_DL_SYMENT) != 0
        };
        if !ok || owner != lib.link_map || entry.is_null() {
            return Err(PluginError::NotFound);
        }
        // SAFETY: RTLD_DL_SYMENT points at the symbol's Elf64_Sym, whose
        // st_info byte is at offset 4.
        let st_type = unsafe { *entry.cast::<u8>().add(4) } & 0xf;
        if st_type != STT_FUNC && st_type != STT_GNU_IFUNC {
            return Err(PluginError::NotFound);
        }
        // SAFETY: a function defined in an operator-allowed library; the
        // operator vouches that its exported functions follow the EXEC
        // convention.
        Ok(unsafe { std::mem::transmute::<*mut c_void, ExecFn>(addr) })
    }

    /// Runs an EXEC request; its buffers are the guest's, checked.
    pub fn call(&self, e: &mut Exec<'_>) -> Result<(), PluginError> {
        let f = self.function(e.library, e.symbol)?;
        let mut ins = [VaccelArg::from(&In::EMPTY); MAX];
        for (slot, a) in ins.iter_mut().zip(e.inputs()) {
            *slot = VaccelArg::from(a);
        }
        let nr_in = e.inputs().len();
        let mut outs = [VaccelArg::from(&In::EMPTY); MAX];
        let mut nr_out = 0;
        for (slot, a) in outs.iter_mut().zip(e.outputs().iter_mut()) {
            *slot = VaccelArg::from_out(a);
            nr_out += 1;
        }
        // SAFETY: every buffer is a checked range of guest memory, valid for
        // the call; the outputs are exclusive (no overlap with any other
        // argument). The function is the operator's (see `function`).
        let r = unsafe { f(ins.as_mut_ptr(), nr_in, outs.as_mut_ptr(), nr_out) };
        if r != 0 {
            return Err(PluginError::Backend {
                plugin: "cpu",
                what: "EXEC function failed",
                detail: format!(
                    "{}:{} returned {r}",
                    String::from_utf8_lossy(e.library),
                    String::from_utf8_lossy(e.symbol)
                ),
            });
        }
        Ok(())
    }
}

impl VaccelArg {
    fn from(a: &In<'_>) -> Self {
        VaccelArg {
            buf: a.bytes.as_ptr().cast_mut().cast(),
            size: a.bytes.len(),
            ty: a.ty,
            custom: a.custom,
        }
    }
    fn from_out(a: &mut Out<'_>) -> Self {
        VaccelArg {
            buf: a.bytes.as_mut_ptr().cast(),
            size: a.bytes.len(),
            ty: a.ty,
            custom: a.custom,
        }
    }
}
