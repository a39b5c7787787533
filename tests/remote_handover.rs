//! Handing a guest's remote accelerator sessions over (live migration,
//! issue 25) through a real `skiff agent`: the source's runtime parks
//! them, another runtime claims them and serves the guest's session and
//! resource ids; a failed migration takes them back; a local plugin with
//! sessions, and an agent without skiff's service (vAccel's), refuse with
//! one line. Requests are laid out in guest memory as a guest lays them.

mod common;
mod remote_agent;
use guest_abi::accel::*;
use remote_agent::*;
use skiff::accel::config::AccelConfig;
use skiff::accel::handover::HandOverError;
use skiff::accel::plugins::PluginKind;
use skiff::accel::remote::RemoteConfig;
use skiff::accel::Accel;
use skiff::memory::{Gpa, GuestMemory};
use std::time::Duration;

/// Guest memory and a bump allocator in it.
struct Guest {
    mem: GuestMemory,
    next: u64,
}

impl Guest {
    fn new() -> Self {
        Guest {
            mem: GuestMemory::new(4 << 20).unwrap(),
            next: 0x1000,
        }
    }

    fn put(&mut self, b: &[u8]) -> u64 {
        let at = self.next;
        self.mem.write_bytes(b, Gpa(at)).unwrap();
        self.next = (at + b.len() as u64 + 63) & !63;
        at
    }

    /// One read argument array of `(type, bytes)`: (its GPA, its length).
    fn args(&mut self, args: &[(u32, &[u8])]) -> (u64, u32) {
        let mut raw = Vec::new();
        for (ty, b) in args {
            let gpa = self.put(b);
            raw.extend(gpa.to_le_bytes());
            raw.extend((b.len() as u64).to_le_bytes());
            raw.extend(ty.to_le_bytes());
            raw.extend(0u32.to_le_bytes());
        }
        (self.put(&raw), args.len() as u32)
    }

    fn call(&self, a: &mut Accel, mut req: HcAccel) -> HcAccel {
        a.handle(&self.mem, &mut req);
        req
    }

    fn session(&self, a: &mut Accel) -> u32 {
        let r = self.call(
            a,
            HcAccel {
                cmd: CMD_SESSION_INIT,
                ..HcAccel::default()
            },
        );
        assert_eq!(r.ret, OK);
        r.session
    }

    fn noop(&mut self, a: &mut Accel, session: u32) -> i32 {
        let (read_args, nr_read) = self.args(&[(arg::UINT8, &[op::NOOP])]);
        let req = HcAccel {
            cmd: CMD_GENOP,
            session,
            read_args,
            nr_read,
            ..HcAccel::default()
        };
        self.call(a, req).ret
    }

    /// A DATA resource of `bytes`: (ret, id).
    fn register(&mut self, a: &mut Accel, session: u32, bytes: &[u8]) -> (i32, u32) {
        let (read_args, nr_read) = self.args(&[(arg::BUFFER, bytes)]);
        let req = HcAccel {
            cmd: CMD_RESOURCE_REGISTER,
            session,
            flags: RESOURCE_DATA,
            read_args,
            nr_read,
            ..HcAccel::default()
        };
        let r = self.call(a, req);
        (r.ret, r.resource)
    }

    fn simple(&self, a: &mut Accel, cmd: u32, session: u32, resource: u32) -> i32 {
        let req = HcAccel {
            cmd,
            session,
            resource,
            ..HcAccel::default()
        };
        self.call(a, req).ret
    }
}

fn remote(addr: &str) -> AccelConfig {
    AccelConfig {
        plugins: Some(vec![PluginKind::Remote]),
        models: Vec::new(),
        libs: Vec::new(),
        remote: Some(RemoteConfig {
            addr: addr.parse().unwrap(),
            timeout: Duration::from_secs(20),
        }),
    }
}

#[test]
fn another_runtime_claims_the_sessions_with_their_ids() {
    let agent = Agent::tcp(&[]);
    let cfg = remote(&agent.addr);
    let mut g = Guest::new();
    let mut src = Accel::build(&cfg).unwrap().unwrap();
    let s = g.session(&mut src);
    let (ret, res) = g.register(&mut src, s, b"some data");
    assert_eq!(ret, OK);
    // The first op makes the agent session and registers the resource.
    assert_eq!(g.noop(&mut src, s), OK);

    let token = src.hand_over().unwrap();
    // Parked: the source's agent session is gone from its connection.
    assert_ne!(g.noop(&mut src, s), OK);

    let mut dst = Accel::claim(&cfg, &token)
        .unwrap()
        .expect("accelerators on");
    assert!(dst.in_use());
    assert_eq!(g.noop(&mut dst, s), OK, "the guest's session id serves");
    assert_eq!(dst.resources(s).count(), 1);
    assert_eq!(g.simple(&mut dst, CMD_RESOURCE_UNREGISTER, s, res), OK);
    assert_eq!(g.simple(&mut dst, CMD_SESSION_RELEASE, s, 0), OK);
    assert!(!dst.in_use());

    // A token claims once.
    let again = Accel::claim(&cfg, &token).unwrap_err();
    assert!(
        matches!(again, HandOverError::Agent { .. }) && again.to_string().contains("Unknown token"),
        "{again}"
    );
    // Corrupt bytes: an error, never a panic.
    for cut in [0, 5, 12, token.len() - 1] {
        let e = Accel::claim(&cfg, &token[..cut]).unwrap_err();
        assert!(matches!(e, HandOverError::Malformed(_)), "{cut}: {e}");
    }
}

/// An agent, and a runtime on it with one guest session whose agent
/// session a first op made.
fn one_session() -> (Agent, AccelConfig, Guest, Accel, u32) {
    let agent = Agent::tcp(&[]);
    let cfg = remote(&agent.addr);
    let mut g = Guest::new();
    let mut a = Accel::build(&cfg).unwrap().unwrap();
    let s = g.session(&mut a);
    assert_eq!(g.noop(&mut a, s), OK);
    (agent, cfg, g, a, s)
}

/// As a migration's destination does: the runtime built before the
/// stop takes the sessions in; one with sessions of its own refuses.
#[test]
fn a_runtime_built_already_claims_the_sessions_into_itself() {
    let (_agent, cfg, mut g, mut src, s) = one_session();
    let mut dst = Accel::build(&cfg).unwrap().unwrap();
    let token = src.hand_over().unwrap();
    dst.claim_here(&token).unwrap();
    assert_eq!(g.noop(&mut dst, s), OK, "the guest's session id serves");
    let e = dst.claim_here(&token).unwrap_err();
    assert!(matches!(e, HandOverError::Malformed(_)), "{e}");
    assert_eq!(g.simple(&mut dst, CMD_SESSION_RELEASE, s, 0), OK);
}

#[test]
fn a_failed_migration_takes_the_sessions_back() {
    let (_agent, _, mut g, mut src, s) = one_session();
    let token = src.hand_over().unwrap();
    src.take_back(&token).unwrap();
    assert_eq!(g.noop(&mut src, s), OK);
    assert_eq!(g.simple(&mut src, CMD_SESSION_RELEASE, s, 0), OK);
}

#[test]
fn local_sessions_and_vaccels_agent_refuse_with_one_line() {
    let g = Guest::new();
    let cpu = AccelConfig {
        plugins: Some(vec![PluginKind::Cpu]),
        ..remote("tcp://127.0.0.1:1")
    };
    let cpu = AccelConfig {
        remote: None,
        ..cpu
    };
    let mut a = Accel::build(&cpu).unwrap().unwrap();
    // Nothing open: nothing to move, any runtime takes it.
    let token = a.hand_over().unwrap();
    assert!(!Accel::claim(&cpu, &token).unwrap().unwrap().in_use());
    g.session(&mut a);
    let e = a.hand_over().unwrap_err();
    assert_eq!(
        e.to_string(),
        "accelerator sessions are open on plugin cpu, whose state cannot move"
    );

    // An agent that knows only vAccel's service.
    let vaccel = VaccelOnly::start();
    let cfg = remote(&vaccel.addr);
    let mut src = Accel::build(&cfg).unwrap().unwrap();
    g.session(&mut src);
    let e = src.hand_over().unwrap_err();
    assert!(matches!(e, HandOverError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("not a skiff agent"), "{e}");
}

/// A stand-in for vAccel's agent as far as skiff's extension goes: every
/// call is answered "does not exist", as vAccel's agent answers a service
/// it does not have.
struct VaccelOnly {
    addr: String,
}

impl VaccelOnly {
    fn start() -> Self {
        use skiff::vaccel::frame::{self, Header};
        use skiff::vaccel::proto::{self, Request};
        let any: skiff::vaccel::addr::Address = "tcp://127.0.0.1:0".parse().unwrap();
        let l = any.listen().unwrap();
        let addr = l.local(&any).to_string();
        std::thread::spawn(move || {
            let Ok(mut s) = l.accept() else { return };
            while let Ok((hd, body)) = frame::read_frame(&mut s, 1 << 20, None, None) {
                let Ok((req, _)) = proto::split::<Request>(&body, 3) else {
                    return;
                };
                let msg = format!("/{}/{} does not exist", req.service, req.method);
                let b = proto::error_response(proto::status(proto::CODE_INVALID_ARGUMENT, msg));
                let h = Header {
                    len: b.len() as u32,
                    stream: hd.stream,
                    kind: frame::TYPE_RESPONSE,
                    flags: 0,
                };
                if frame::write_frame(&mut s, h, &b).is_err() {
                    return;
                }
            }
        });
        VaccelOnly { addr }
    }
}
