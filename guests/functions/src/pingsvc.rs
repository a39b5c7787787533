//! A ping responder shared by the net guests (included with `#[path]`):
//! answers ARP requests for its address and ICMP echo requests to it, as
//! Solo5's test_net does.

use guest_abi::hvt::ret;
use guest_abi::println;
use guest_abi::rt::{net_read, net_write, poll, Ctx};

/// One interface: its handle, MAC and IPv4 address.
pub struct Iface {
    pub handle: u64,
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

const ETH_ARP: u16 = 0x0806;
const ETH_IP: u16 = 0x0800;
const NSEC_PER_SEC: u64 = 1_000_000_000;
/// A jumbo frame fits.
pub const FRAME_MAX: usize = 9216 + 18;

/// Four bytes as one integer: compares without `repz cmpsb`, a string
/// instruction that is very slow on this project's nested KVM.
fn ip_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < b.len() {
        sum += u32::from(be16(b, i));
        i += 2;
    }
    if i < b.len() {
        sum += u32::from(b[i]) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses `a.b.c.d`.
pub fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut it = s.split('.');
    for b in ip.iter_mut() {
        *b = it.next()?.parse().ok()?;
    }
    it.next().is_none().then_some(ip)
}

/// The interface named `name`, addressed `ip`.
pub fn iface(ctx: &Ctx, name: &str, ip: [u8; 4]) -> Option<Iface> {
    let (handle, e) = ctx.device(name)?;
    if e.attached == 0 {
        return None;
    }
    let mac = e.net_mac();
    println!(
        "{name}: serving ping on {}.{}.{}.{} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu {}",
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        e.net_mtu()
    );
    Some(Iface { handle, mac, ip })
}

/// Turns the frame in `f` into its answer in place; the answer's length,
/// or `None` if the frame wants none. Counts echo requests in `pings`.
fn answer(ifc: &Iface, f: &mut [u8], pings: &mut u64) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    match be16(f, 12) {
        ETH_ARP if f.len() >= 42 => {
            // Ethernet/IPv4 request (op 1) for our address.
            if be16(f, 14) != 1
                || be16(f, 16) != ETH_IP
                || be16(f, 20) != 1
                || ip_at(f, 38) != u32::from_ne_bytes(ifc.ip)
            {
                return None;
            }
            let (sha, spa) = (
                [f[22], f[23], f[24], f[25], f[26], f[27]],
                [f[28], f[29], f[30], f[31]],
            );
            f[0..6].copy_from_slice(&sha);
            f[6..12].copy_from_slice(&ifc.mac);
            f[21] = 2;
            f[22..28].copy_from_slice(&ifc.mac);
            f[28..32].copy_from_slice(&ifc.ip);
            f[32..38].copy_from_slice(&sha);
            f[38..42].copy_from_slice(&spa);
            Some(42)
        }
        ETH_IP if f.len() >= 34 => {
            let ihl = usize::from(f[14] & 0xf) * 4;
            let total = usize::from(be16(f, 16));
            if f[14] >> 4 != 4
                || ihl < 20
                || f[23] != 1
                || ip_at(f, 30) != u32::from_ne_bytes(ifc.ip)
            {
                return None;
            }
            let end = 14 + total;
            let icmp = 14 + ihl;
            if total < ihl + 8 || end > f.len() || f[icmp] != 8 {
                return None;
            }
            *pings += 1;
            // Swap the addresses; the IP checksum is unchanged by a swap.
            // This KVM emulates every guest instruction, so the ICMP
            // checksum is updated (RFC 1624) rather than recomputed.
            let src = [f[6], f[7], f[8], f[9], f[10], f[11]];
            f[0..6].copy_from_slice(&src);
            f[6..12].copy_from_slice(&ifc.mac);
            let sip = [f[26], f[27], f[28], f[29]];
            f[26..30].copy_from_slice(&ifc.ip);
            f[30..34].copy_from_slice(&sip);
            // Type 8 -> 0: the word (type, code) drops by 0x0800.
            f[icmp] = 0;
            let old = be16(f, icmp + 2);
            let mut sum = u32::from(!old) + u32::from(!0x0800u16);
            sum = (sum & 0xffff) + (sum >> 16);
            let c = !(sum as u16);
            f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            Some(end)
        }
        _ => None,
    }
}

/// Sends a gratuitous ARP so the host learns the guest's MAC at once.
fn garp(ifc: &Iface) {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&ifc.mac);
    f[12..14].copy_from_slice(&ETH_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&ifc.mac);
    f[28..32].copy_from_slice(&ifc.ip);
    f[38..42].copy_from_slice(&ifc.ip);
    net_write(ifc.handle, &f);
}

/// Serves ping on every interface; returns after `limit` echo requests
/// answered in all (never, if `None`). Returns false on a device error.
pub fn serve(ifs: &[Iface], limit: Option<u64>) -> bool {
    static mut BUF: [u8; FRAME_MAX] = [0; FRAME_MAX];
    // SAFETY: one vCPU, and `serve` runs once: the only reference.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let mut pings = 0u64;
    for i in ifs {
        garp(i);
    }
    loop {
        let (ready, rc) = poll(NSEC_PER_SEC);
        if rc < 0 {
            println!("ping: poll returned {rc}");
            return false;
        }
        for ifc in ifs {
            if ready & (1 << ifc.handle) == 0 {
                continue;
            }
            let (rc, len) = net_read(ifc.handle, buf);
            match rc {
                ret::OK => {
                    if let Some(n) = answer(ifc, &mut buf[..len], &mut pings) {
                        let rc = net_write(ifc.handle, &buf[..n]);
                        if rc != ret::OK {
                            println!("ping: net_write returned {rc}");
                            return false;
                        }
                    }
                }
                ret::AGAIN => {}
                other => {
                    println!("ping: net_read returned {other}");
                    return false;
                }
            }
        }
        if limit.is_some_and(|l| pings >= l) {
            println!("ping: limit reached, {pings} pings answered");
            return true;
        }
    }
}
