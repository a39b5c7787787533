//! One request's guest: a pool worker (src/pool/) handed a pipe for the
//! request body, a pipe for the response and this process's stderr, with
//! the request's `Http_*` variables, over the private pool socket. The
//! worker's reply (after the guest's HALT) carries its exit status.
//! Dropping a [`Guest`] hangs up on the worker, which stops the guest
//! (SIGIO, as `skiff call` going away does).

use crate::pool::proto::{self, Reply, HEAD_FIXED, HEAD_MAGIC, REPLY_LEN};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, Error)]
pub enum GuestError {
    #[error("cannot reach a worker: {0}")]
    Connect(std::io::Error),
    #[error("cannot make the request's pipes: {0}")]
    Pipe(std::io::Error),
    #[error("{0}")]
    Proto(#[from] proto::ProtoError),
    #[error("the response does not start with a head frame")]
    Head,
    #[error("the worker ended without an answer")]
    NoAnswer,
}

/// A dispatched request (its body goes to the worker through the
/// `pipe::Sender` that [`Guest::dispatch`] returns beside it).
pub struct Guest {
    pub conn: tokio::net::UnixStream,
    pub stdout: pipe::Receiver,
}

/// A pipe as (read end, write end), close-on-exec.
fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Guest {
    /// Hands a ready worker this request.
    pub fn dispatch(
        pool: &Path,
        vars: &[(OsString, OsString)],
        warm: bool,
    ) -> Result<(Self, pipe::Sender), GuestError> {
        let flags = proto::Flags { framed: true, warm };
        let msg = proto::encode_request(flags, vars)?;
        let (in_r, in_w) = pipe_pair().map_err(GuestError::Pipe)?;
        let (out_r, out_w) = pipe_pair().map_err(GuestError::Pipe)?;
        let conn = std::os::unix::net::UnixStream::connect(pool).map_err(GuestError::Connect)?;
        let sent = conn
            .send_with_fds(&[&msg[..]], &[in_r.as_raw_fd(), out_w.as_raw_fd(), 2])
            .map_err(|e| GuestError::Connect(std::io::Error::from_raw_os_error(e.errno())))?;
        std::io::Write::write_all(&mut &conn, &msg[sent..]).map_err(GuestError::Connect)?;
        // The worker holds its ends now; ours close here, so it sees EOF on
        // stdin when we close in_w, and we see EOF on stdout when it exits.
        drop((in_r, out_w));
        conn.set_nonblocking(true).map_err(GuestError::Connect)?;
        let guest = Guest {
            conn: tokio::net::UnixStream::from_std(conn).map_err(GuestError::Connect)?,
            stdout: pipe::Receiver::from_owned_fd(out_r).map_err(GuestError::Pipe)?,
        };
        Ok((
            guest,
            pipe::Sender::from_owned_fd(in_w).map_err(GuestError::Pipe)?,
        ))
    }

    /// The worker's reply once the guest has ended: its exit status.
    pub async fn status(&mut self) -> Result<i32, GuestError> {
        let mut buf = [0u8; REPLY_LEN];
        self.conn
            .read_exact(&mut buf)
            .await
            .map_err(|_| GuestError::NoAnswer)?;
        Ok(Reply::decode(&buf)?.status)
    }
}

/// The response head the function set (RESP_HEAD), parsed from the start
/// of its framed stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// 0: not set (200, or 500 on failure).
    pub status: u16,
    pub content_type: Vec<u8>,
}

/// Parses a head frame at the start of `buf`: the head and its length,
/// `Ok(None)` if more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, GuestError> {
    if buf.len() < HEAD_FIXED {
        return match HEAD_MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            true => Ok(None),
            false => Err(GuestError::Head),
        };
    }
    if buf[..4] != HEAD_MAGIC {
        return Err(GuestError::Head);
    }
    let status = u16::from_le_bytes([buf[4], buf[5]]);
    let tlen = u16::from_le_bytes([buf[6], buf[7]]) as usize;
    if buf.len() < HEAD_FIXED + tlen {
        return Ok(None);
    }
    let head = Head {
        status,
        content_type: buf[HEAD_FIXED..HEAD_FIXED + tlen].to_vec(),
    };
    Ok(Some((head, HEAD_FIXED + tlen)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::proto::head_frame;

    #[test]
    fn head_frames_parse_whole_or_ask_for_more() {
        let f = head_frame(201, b"text/plain");
        for cut in 0..f.len() {
            assert!(parse_head(&f[..cut]).unwrap().is_none(), "{cut}");
        }
        let mut with_body = f.clone();
        with_body.extend_from_slice(b"body");
        let (h, n) = parse_head(&with_body).unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.content_type, b"text/plain");
        assert_eq!(&with_body[n..], b"body");
        assert!(parse_head(b"HTTP/1.1").is_err());
        assert!(parse_head(b"x").is_err());
    }
}
