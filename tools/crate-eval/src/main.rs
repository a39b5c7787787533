//! The measurement behind docs/architecture.md's paragraphs on linux-loader
//! and event-manager (not part of skiff; its own workspace):
//! `cd tools/crate-eval && cargo run --release -- ../../target/guests/hello.hvt`
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use std::os::fd::RawFd;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const MEM: u64 = 64 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn elf(path: &str) {
    let bytes = std::fs::read(path).unwrap();
    let n = 200;
    let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        // skiff: parse + checks (notes, manifest, segments) + copy.
        let mem = skiff::memory::GuestMemory::new(MEM).unwrap();
        let t = Instant::now();
        let img = skiff::image::Image::parse(&bytes, MEM).unwrap();
        img.load(&mem).unwrap();
        a.push(t.elapsed().as_secs_f64() * 1e6);
        drop(mem);
        // skiff: the parse and checks alone.
        let t = Instant::now();
        let img = skiff::image::Image::parse(&bytes, MEM).unwrap();
        d.push(t.elapsed().as_secs_f64() * 1e6);
        drop(img);
        // linux-loader from the bytes already read.
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let t = Instant::now();
        Elf::load(&gm, None, &mut Cursor::new(&bytes[..]), Some(GuestAddress(0x100000))).unwrap();
        b.push(t.elapsed().as_secs_f64() * 1e6);
        drop(gm);
        // linux-loader from the file (seek + read per header and segment).
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut f = std::fs::File::open(path).unwrap();
        let t = Instant::now();
        Elf::load(&gm, None, &mut f, Some(GuestAddress(0x100000))).unwrap();
        c.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "{path} ({} bytes): median us: skiff parse+check {:.1}, skiff parse+check+load {:.1}, linux-loader load from bytes {:.1}, from file {:.1}",
        bytes.len(), median(d), median(a), median(b), median(c)
    );
}

struct Sub {
    fd: RawFd,
    ready: u64,
}
impl MutEventSubscriber for Sub {
    fn process(&mut self, _e: Events, _ops: &mut EventOps) {
        self.ready |= 1;
    }
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new_raw(self.fd, EventSet::IN)).unwrap();
    }
}

fn poll() {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array of two ints.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let n = 200_000;
    for ready in [false, true] {
        if ready {
            // SAFETY: one byte from a static buffer to our own pipe.
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        }
        let mut w = skiff::devices::poll::Waiter::new().unwrap();
        w.add(fds[0], 0).unwrap();
        let mut em: EventManager<Sub> = EventManager::new().unwrap();
        em.add_subscriber(Sub { fd: fds[0], ready: 0 });
        let mut rs = vec![];
        let mut re = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(w.wait(0).unwrap());
            }
            rs.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(em.run_with_timeout(0).unwrap());
            }
            re.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        println!(
            "POLL timeout 0, fd {}: ns per call: skiff Waiter {:.0}, event-manager {:.0}",
            if ready { "ready" } else { "idle" },
            median(rs),
            median(re)
        );
    }
}

fn main() {
    for p in std::env::args().skip(1) {
        elf(&p);
    }
    poll();
}
