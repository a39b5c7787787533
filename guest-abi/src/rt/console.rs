//! Formatted console output with no allocation.
//!
//! Text is gathered in a small stack buffer and handed to PUTS when the
//! buffer fills or the `print!` ends, so a line costs one exit in the common
//! case instead of one per formatted piece.

use core::fmt;

use super::hypercall::puts;

/// Bytes buffered before a PUTS; big enough for a typical line.
const BUF_SIZE: usize = 256;

/// A `core::fmt::Write` sink that buffers and flushes to the console.
#[derive(Debug)]
pub struct Console {
    buf: [u8; BUF_SIZE],
    len: usize,
}

impl Console {
    pub const fn new() -> Self {
        Self {
            buf: [0; BUF_SIZE],
            len: 0,
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            puts(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == BUF_SIZE {
                self.flush();
            }
            let n = rest.len().min(BUF_SIZE - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// Backs [`print!`](crate::print) and [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut c = Console::new();
    // Console::write_str never fails; an Err could only come from a Display
    // impl, and then the partial output is still worth showing.
    let _ = fmt::Write::write_fmt(&mut c, args);
    c.flush();
}

/// Prints to the tender's console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::rt::_print(::core::format_args!($($arg)*))
    };
}

/// Prints to the tender's console, with a newline.
#[macro_export]
macro_rules! println {
    () => {
        $crate::rt::puts(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::rt::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}
