//! A warm guest's worker (`skiff serve --warm`): when the guest asks for
//! the next request (REQ_NEXT), the worker answers the current caller with
//! status 0, tells the pool it is ready again, and waits for the next
//! connection on the pool's socket, still confined and with the guest
//! paused inside its hypercall. The guest keeps its memory across these
//! requests: that is the trade-off the server's flag names (docs/serve.md).

use super::proto::{Reply, REQUEST_HEADER, VARS_MAX};
use super::worker::{self, READY, TAKEN};
use crate::devices::function::{NextRequest, Vars};
use crate::diag::line as report;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;

/// What the worker keeps for later requests, made before it is confined.
pub(super) struct Fds {
    listener: UnixListener,
    /// The worker's own stderr: fds 0-2 point at it between requests, so
    /// the last caller's pipes close (it sees the end of the response) and
    /// the next accept cannot land on fd 0-2.
    park: OwnedFd,
}

impl Fds {
    pub(super) fn new(listener: &UnixListener) -> Option<Self> {
        Some(Fds {
            listener: listener.try_clone().ok()?,
            park: std::io::stderr().as_fd().try_clone_to_owned().ok()?,
        })
    }

    /// The fd that stands in for 0-2 between requests.
    pub(super) fn park_fd(&self) -> RawFd {
        self.park.as_raw_fd()
    }
}

/// The REQ_NEXT source for the guest of the request on `conn`.
pub(super) fn next_request(
    prog: String,
    conn: Rc<RefCell<UnixStream>>,
    fds: Fds,
    pipe: RawFd,
) -> Box<dyn NextRequest> {
    Box::new(Warm {
        prog,
        conn,
        fds,
        pipe,
        buf: vec![0u8; REQUEST_HEADER + VARS_MAX],
    })
}

/// A warm worker between requests: its current caller, its parking fds,
/// the pipe to the pool and a buffer for the next request.
struct Warm {
    prog: String,
    conn: Rc<RefCell<UnixStream>>,
    fds: Fds,
    pipe: RawFd,
    buf: Vec<u8>,
}

impl NextRequest for Warm {
    fn next(&mut self) -> Option<Vars> {
        {
            let old = self.conn.borrow();
            // SAFETY: fcntl clears O_ASYNC on our own socket: its hang-up,
            // once answered, must not stop the guest. dup2 parks 0-2.
            unsafe {
                libc::fcntl(old.as_raw_fd(), libc::F_SETFL, 0);
                for fd in 0..3 {
                    libc::dup2(self.fds.park.as_raw_fd(), fd);
                }
            }
            let reply = Reply {
                status: 0,
                marks: [0; crate::marks::COUNT],
                exits: 0,
            };
            let _ = (&*old).write_all(&reply.encode());
        }
        worker::tell(self.pipe, READY);
        super::set_stop_signals(libc::SIG_BLOCK);
        let next = worker::accept_one(&self.prog, &self.fds.listener)
            .ok()
            .flatten()?;
        super::set_stop_signals(libc::SIG_UNBLOCK);
        worker::tell(self.pipe, TAKEN);
        // The server's next request asks what the first did (framed, warm).
        let vars = match worker::receive(&next, &mut self.buf) {
            Ok((_, v)) => v,
            Err(e) => {
                report(&self.prog, &e);
                return None;
            }
        };
        if !worker::watch_hangup(&next) {
            return None;
        }
        *self.conn.borrow_mut() = next;
        Some(vars)
    }
}
