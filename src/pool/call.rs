//! `skiff call PATH`: one request to a pool. Sends this process's stdin,
//! stdout and stderr and its Http_* variables to a ready worker, waits for
//! the guest to end and exits with its status, as `skiff run` would.
//! SIGINT/SIGTERM (e.g. the watchdog's timeout) end the call, and the
//! worker, seeing the hang-up, stops the guest.

use super::proto::{self, Reply, REPLY_LEN};
use crate::marks::{self, Mark};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the pool at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}")]
    Proto(#[from] proto::ProtoError),
    #[error("cannot send the request to the pool: {0}")]
    Send(std::io::Error),
    #[error("the pool's worker ended without an answer")]
    NoAnswer,
    #[error("exiting on signal {0}")]
    Signal(i32),
}

impl CallError {
    /// 128+N for signal N, else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            CallError::Signal(s) => 128 + s,
            _ => 1,
        }
    }
}

/// Sends this process's request to the pool at `socket` and waits for the
/// guest's exit status (the phase marks are taken from the reply).
pub fn call(socket: &Path) -> Result<i32, CallError> {
    let conn = UnixStream::connect(socket)
        .map_err(|e| CallError::Connect(socket.display().to_string(), e))?;
    let vars: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| k.as_encoded_bytes().starts_with(b"Http_"))
        .collect();
    let msg = proto::encode_request(proto::Flags::default(), &vars)?;
    let sent = conn
        .send_with_fds(&[&msg[..]], &[0, 1, 2])
        .map_err(|e| CallError::Send(std::io::Error::from_raw_os_error(e.errno())))?;
    (&conn).write_all(&msg[sent..]).map_err(CallError::Send)?;
    let mut buf = [0u8; REPLY_LEN];
    let mut got = 0;
    if let Some(sig) = crate::signals::pending() {
        return Err(CallError::Signal(sig));
    }
    while got < REPLY_LEN {
        match (&conn).read(&mut buf[got..]) {
            Ok(0) => return Err(CallError::NoAnswer),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if let Some(sig) = crate::signals::pending() {
                    return Err(CallError::Signal(sig));
                }
            }
            Err(_) => return Err(CallError::NoAnswer),
        }
    }
    let reply = Reply::decode(&buf)?;
    marks::set_from(Mark::Request, &reply.marks, reply.exits);
    Ok(reply.status)
}
