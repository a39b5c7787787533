//! skiff's hand-over of a connection's sessions and resources (service
//! `skiff.agent.Handover`, not vAccel's; a vAccel agent answers it "does
//! not exist"), for live migration: the source's runtime parks them under
//! a random token, the destination's claims them on its own connection
//! (a failed migration: the source claims them back). Session and
//! resource ids are the agent process's, so they stay valid.
//!
//! Parked state belongs to no connection: it expires after [`PARK_TIME`]
//! unclaimed (dropped within a second by the accept loop, or at the next
//! park or claim, as a closed connection's would be), so a migration that
//! never finishes costs the agent nothing for long.

use super::conn::Failure;
use super::exec::Executor;
use super::resource::Resources;
use crate::vaccel::proto::{self, status, ClaimRequest, ParkResponse, CODE_NOT_FOUND};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The service's name; its methods are `Park` and `Claim`.
pub const SERVICE: &str = crate::vaccel::HANDOVER;

/// How long parked sessions wait to be claimed.
pub const PARK_TIME: Duration = Duration::from_secs(60);

/// Bytes of a token (random: whoever holds it may claim).
const TOKEN_LEN: usize = 16;

struct Parked {
    token: [u8; TOKEN_LEN],
    until: Instant,
    resources: Resources,
}

static PARKED: Mutex<Vec<Parked>> = Mutex::new(Vec::new());

fn parked() -> std::sync::MutexGuard<'static, Vec<Parked>> {
    PARKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops what waited longer than [`PARK_TIME`].
pub(super) fn expire(exec: &Executor) {
    expire_at(Instant::now(), exec);
}

/// Drops what is due at `now`.
fn expire_at(now: Instant, exec: &Executor) {
    let gone: Vec<Parked> = {
        let mut p = parked();
        let (keep, gone) = std::mem::take(&mut *p)
            .into_iter()
            .partition(|x| x.until > now);
        *p = keep;
        gone
    };
    for mut g in gone {
        g.resources.clear(exec);
    }
}

fn token() -> Result<[u8; TOKEN_LEN], Failure> {
    let mut t = [0u8; TOKEN_LEN];
    // SAFETY: getrandom writes at most `t.len()` bytes into `t`.
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    if n != TOKEN_LEN as isize {
        return Err(proto::ffi_status(libc::EAGAIN));
    }
    Ok(t)
}

/// Park: moves every session and resource of `res` aside (`res` is left
/// empty); the token to claim them with.
pub fn park(res: &mut Resources, exec: &Executor) -> Result<ParkResponse, Failure> {
    expire(exec);
    let token = token()?;
    parked().push(Parked {
        token,
        until: Instant::now() + PARK_TIME,
        resources: std::mem::take(res),
    });
    Ok(ParkResponse {
        token: token.to_vec(),
        expires_ms: PARK_TIME.as_millis() as u64,
        ..Default::default()
    })
}

/// Claim: `res`, holding nothing, takes the sessions parked under the
/// request's token.
pub fn claim(res: &mut Resources, r: &ClaimRequest, exec: &Executor) -> Result<(), Failure> {
    expire(exec);
    if !res.is_empty() {
        return Err(proto::ffi_status(libc::EBUSY));
    }
    let mut p = parked();
    let Some(i) = p.iter().position(|x| x.token[..] == r.token[..]) else {
        return Err(status(CODE_NOT_FOUND, "Unknown token".into()));
    };
    *res = p.swap_remove(i).resources;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::config::AccelConfig;
    use crate::accel::plugins::PluginKind;

    #[test]
    fn parked_sessions_expire_and_a_token_claims_once() {
        let cfg = AccelConfig {
            plugins: Some(vec![PluginKind::Cpu]),
            ..AccelConfig::default()
        };
        let (exec, _) = Executor::start(cfg).unwrap();
        let claim_of = |t: &[u8], res: &mut Resources| {
            let r = ClaimRequest {
                token: t.to_vec(),
                ..Default::default()
            };
            claim(res, &r, &exec)
        };
        // Parked, then claimed on another connection's state, once.
        let mut a = Resources::default();
        let s = a.open(0).unwrap();
        let t = park(&mut a, &exec).unwrap().token;
        assert!(a.is_empty());
        let mut b = Resources::default();
        claim_of(&t, &mut b).unwrap();
        assert!(b.session(s).is_ok());
        let mut c = Resources::default();
        assert_eq!(claim_of(&t, &mut c).unwrap_err().code, CODE_NOT_FOUND);
        // A connection holding something cannot claim.
        let t = park(&mut b, &exec).unwrap().token;
        c.open(0).unwrap();
        assert_eq!(
            proto::errno_of(&claim_of(&t, &mut c).unwrap_err()),
            libc::EBUSY
        );
        // Unclaimed past PARK_TIME: gone.
        expire_at(Instant::now() + PARK_TIME + Duration::from_secs(1), &exec);
        let mut d = Resources::default();
        assert_eq!(claim_of(&t, &mut d).unwrap_err().code, CODE_NOT_FOUND);
    }
}
