//! The pool's wire format on its unix stream socket: one request from
//! `skiff call` (its stdin, stdout and stderr ride along as SCM_RIGHTS),
//! one reply from the worker when the guest has ended. Both sides are
//! this binary, so a magic with a version is all the negotiation there is.

use crate::marks::COUNT;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use thiserror::Error;

/// `SKIFFRQ2`, the request's [`Flags`] (u32 LE), then the byte length
/// (u32 LE) of the variables that follow.
pub const REQUEST_MAGIC: [u8; 8] = *b"SKIFFRQ2";
pub const REQUEST_HEADER: usize = 16;
/// The most request metadata a call may carry (the `Http_*` variables).
pub const VARS_MAX: usize = 64 << 10;
/// The fds a request carries: stdin, stdout, stderr.
pub const FDS: usize = 3;

/// What a request asks of its worker besides running the guest (`skiff
/// call` asks nothing; `skiff serve` sets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// A framed response: stdout starts with the guest's head frame
    /// (`skiff serve`).
    pub framed: bool,
    /// The guest may keep its worker for later requests (REQ_NEXT:
    /// `skiff serve --warm`).
    pub warm: bool,
}

const FRAMED: u32 = 1;
const WARM: u32 = 2;

impl Flags {
    fn bits(self) -> u32 {
        (u32::from(self.framed) * FRAMED) | (u32::from(self.warm) * WARM)
    }

    /// Refuses bits this binary does not know (both sides are one binary:
    /// an unknown bit is a stranger or a corrupt header).
    fn from_bits(b: u32) -> Result<Self, ProtoError> {
        if b & !(FRAMED | WARM) != 0 {
            return Err(ProtoError::Flags(b));
        }
        Ok(Flags {
            framed: b & FRAMED != 0,
            warm: b & WARM != 0,
        })
    }
}

/// The head frame that starts a framed response (a request with
/// [`Flags::framed`]; `skiff serve` reads it before the body): `SKH1`, status (u16 LE,
/// 0: not set), content type length (u16 LE), content type.
pub const HEAD_MAGIC: [u8; 4] = *b"SKH1";
/// The fixed part of a head frame.
pub const HEAD_FIXED: usize = 8;

/// A head frame for `status` (0: the default) and `content_type`.
pub fn head_frame(status: u16, content_type: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEAD_FIXED + content_type.len());
    f.extend_from_slice(&HEAD_MAGIC);
    f.extend_from_slice(&status.to_le_bytes());
    f.extend_from_slice(&(content_type.len() as u16).to_le_bytes());
    f.extend_from_slice(content_type);
    f
}

/// `SKIFFST1`, status (i32 LE), 4 zero bytes, the worker's marks and exit
/// count (u64 LE each).
pub const REPLY_MAGIC: [u8; 8] = *b"SKIFFST1";
pub const REPLY_LEN: usize = 16 + 8 * COUNT + 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error(
        "the request's Http_* variables take {0} bytes, more than the pool accepts ({VARS_MAX})"
    )]
    TooLarge(usize),
    #[error("not a skiff call request (bad magic)")]
    Magic,
    #[error("a skiff call request with unknown flags 0x{0:x}")]
    Flags(u32),
    #[error("a request variable is not NAME=VALUE")]
    Var,
    #[error("not a skiff pool reply")]
    Reply,
}

/// The request: header and `NAME=VALUE\0` for each variable.
pub fn encode_request(flags: Flags, vars: &[(OsString, OsString)]) -> Result<Vec<u8>, ProtoError> {
    let mut body = Vec::new();
    for (k, v) in vars {
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    if body.len() > VARS_MAX {
        return Err(ProtoError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(REQUEST_HEADER + body.len());
    out.extend_from_slice(&REQUEST_MAGIC);
    out.extend_from_slice(&flags.bits().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The request's flags and the length of the variables that follow its
/// header.
pub fn decode_request_header(h: &[u8; REQUEST_HEADER]) -> Result<(Flags, usize), ProtoError> {
    if h[..8] != REQUEST_MAGIC {
        return Err(ProtoError::Magic);
    }
    let flags = Flags::from_bits(u32::from_le_bytes([h[8], h[9], h[10], h[11]]))?;
    let n = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    if n > VARS_MAX {
        return Err(ProtoError::TooLarge(n));
    }
    Ok((flags, n))
}

/// The request's variables (NAME may not be empty or hold `=` or NUL).
pub fn decode_vars(b: &[u8]) -> Result<Vec<(OsString, OsString)>, ProtoError> {
    let Some(body) = b.strip_suffix(&[0]) else {
        return if b.is_empty() {
            Ok(Vec::new())
        } else {
            Err(ProtoError::Var)
        };
    };
    body.split(|&c| c == 0)
        .map(|kv| {
            let eq = kv.iter().position(|&c| c == b'=').ok_or(ProtoError::Var)?;
            if eq == 0 {
                return Err(ProtoError::Var);
            }
            Ok((
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(kv[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

/// What the worker sends back once the guest has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: i32,
    pub marks: [u64; COUNT],
    pub exits: u64,
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0u8; REPLY_LEN];
        out[..8].copy_from_slice(&REPLY_MAGIC);
        out[8..12].copy_from_slice(&self.status.to_le_bytes());
        for (i, m) in self.marks.iter().chain([&self.exits]).enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&m.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8; REPLY_LEN]) -> Result<Self, ProtoError> {
        if b[..8] != REPLY_MAGIC || b[12..16] != [0; 4] {
            return Err(ProtoError::Reply);
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[16 + 8 * i..24 + 8 * i]);
            u64::from_le_bytes(w)
        };
        Ok(Reply {
            status: i32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            marks: std::array::from_fn(word),
            exits: word(COUNT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        s.into()
    }

    #[test]
    fn requests_round_trip() {
        let vars = vec![
            (os("Http_Method"), os("POST")),
            (os("Http_Query"), os("a=b&c=")),
            (os("Http_Empty"), os("")),
        ];
        for framed in [false, true] {
            for warm in [false, true] {
                let flags = Flags { framed, warm };
                let msg = encode_request(flags, &vars).unwrap();
                let h = decode_request_header(msg[..REQUEST_HEADER].try_into().unwrap());
                assert_eq!(h.unwrap(), (flags, msg.len() - REQUEST_HEADER));
                assert_eq!(decode_vars(&msg[REQUEST_HEADER..]).unwrap(), vars);
            }
        }
        assert_eq!(decode_vars(&[]).unwrap(), vec![]);
    }

    #[test]
    fn bad_requests_are_refused() {
        let big = vec![(os("Http_X"), os(&"y".repeat(VARS_MAX)))];
        let flags = Flags::default();
        assert!(matches!(
            encode_request(flags, &big),
            Err(ProtoError::TooLarge(_))
        ));
        let mut h = [0u8; REQUEST_HEADER];
        assert_eq!(decode_request_header(&h), Err(ProtoError::Magic));
        h[..8].copy_from_slice(&REQUEST_MAGIC);
        h[8..12].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(decode_request_header(&h), Err(ProtoError::Flags(4)));
        h[8..12].copy_from_slice(&0u32.to_le_bytes());
        h[12..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_request_header(&h),
            Err(ProtoError::TooLarge(_))
        ));
        for bad in [&b"novalue\0"[..], b"=x\0", b"A=1"] {
            assert_eq!(decode_vars(bad), Err(ProtoError::Var), "{bad:?}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply {
            status: -3,
            marks: std::array::from_fn(|i| i as u64 * 1_000_000_007),
            exits: 42,
        };
        assert_eq!(Reply::decode(&r.encode()), Ok(r));
        let mut b = r.encode();
        b[0] = b'X';
        assert_eq!(Reply::decode(&b), Err(ProtoError::Reply));
    }
}
