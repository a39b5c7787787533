//! Multiplies two matrices through skiff's accelerator hypercall
//! (BLAS_SGEMM) and checks the result against its own integer reference.
//!
//! Entries are small integers, so every plugin's f32 result is exact
//! whatever its summation order; the guest is soft-float, so it builds and
//! reads f32 bit patterns with integer code only. Prints one line,
//! `sgemm M N K checksum=S` (S: the integer sum of C); exits 1 on a
//! mismatch or a failed call. Arguments: `[M N K [ROUNDS [PERIOD_US]]]`
//! (each dimension 1..=512): ROUNDS multiplications on one session,
//! PERIOD_US apart, each checked and printed (live migration moves the
//! guest mid-loop and its session with it).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use guest_abi::println;
use guest_abi::rt::accel::{self, bits, Session};
use guest_abi::rt::{poll, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

const DIM_MAX: usize = 512;
static mut A: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];
static mut B: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];
static mut C: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];

fn a(i: usize, p: usize) -> i64 {
    ((i * 7 + p * 3) % 11) as i64 - 5
}
fn b(p: usize, j: usize) -> i64 {
    ((p * 5 + j * 2) % 9) as i64 - 4
}
fn c0(i: usize, j: usize) -> i64 {
    ((i + j) % 7) as i64 - 3
}
const ALPHA: i64 = 2;
const BETA: i64 = 1;

/// (M, N, K) and (rounds, period in microseconds).
type Args = ((usize, usize, usize), (u64, u64));

fn args(ctx: &Ctx) -> Option<Args> {
    let mut it = ctx.cmdline().split_ascii_whitespace();
    let Some(first) = it.next() else {
        return Some(((40, 24, 33), (1, 0)));
    };
    let mut d = [0usize; 3];
    d[0] = first.parse().ok()?;
    d[1] = it.next()?.parse().ok()?;
    d[2] = it.next()?.parse().ok()?;
    let ok = d.iter().all(|&x| (1..=DIM_MAX).contains(&x));
    let mut loops = [1u64, 0];
    for (slot, s) in loops.iter_mut().zip(it) {
        *slot = s.parse().ok()?;
    }
    (ok && loops[0] >= 1).then_some(((d[0], d[1], d[2]), (loops[0], loops[1])))
}

fn main(ctx: &Ctx) -> i32 {
    if !accel::available(ctx) {
        println!("sgemm: the host offers no accelerator extension");
        return 1;
    }
    let Some(((m, n, k), (rounds, period_us))) = args(ctx) else {
        println!("sgemm: usage: sgemm [M N K [ROUNDS [PERIOD_US]]], each of M N K 1..={DIM_MAX}");
        return 1;
    };
    // SAFETY: single-threaded; the only references to these statics.
    let (am, bm, cm) = unsafe {
        (
            &mut (&mut *addr_of_mut!(A))[..m * k],
            &mut (&mut *addr_of_mut!(B))[..k * n],
            &mut (&mut *addr_of_mut!(C))[..m * n],
        )
    };
    for i in 0..m {
        for p in 0..k {
            am[i * k + p] = bits::f32_from_int(a(i, p));
        }
    }
    for p in 0..k {
        for j in 0..n {
            bm[p * n + j] = bits::f32_from_int(b(p, j));
        }
    }
    let sess = match Session::new(0) {
        Ok(s) => s,
        Err(e) => {
            println!("sgemm: session init failed: errno {e}");
            return 1;
        }
    };
    for round in 0..rounds {
        if round > 0 && period_us > 0 {
            poll(period_us * 1000);
        }
        if !multiply(&sess, (m, n, k), am, bm, cm) {
            return 1;
        }
    }
    let _ = sess.release();
    0
}

/// One checked C = ALPHA * A * B + BETA * C0 on `sess`, printed.
fn multiply(
    sess: &Session,
    (m, n, k): (usize, usize, usize),
    am: &[u32],
    bm: &[u32],
    cm: &mut [u32],
) -> bool {
    for i in 0..m {
        for j in 0..n {
            cm[i * n + j] = bits::f32_from_int(c0(i, j));
        }
    }
    let (mi, ni, ki) = (m as i64, n as i64, k as i64);
    let r = sess.sgemm(
        (mi, ni, ki),
        bits::f32_from_int(ALPHA),
        am,
        ki,
        bm,
        ni,
        bits::f32_from_int(BETA),
        cm,
        ni,
    );
    if let Err(e) = r {
        println!("sgemm: BLAS_SGEMM failed: errno {e}");
        return false;
    }
    let mut sum: i64 = 0;
    for i in 0..m {
        for j in 0..n {
            let want = ALPHA * (0..k).map(|p| a(i, p) * b(p, j)).sum::<i64>() + BETA * c0(i, j);
            let got = cm[i * n + j];
            if bits::f32_to_int(got) != Some(want) {
                println!("sgemm: mismatch at ({i},{j}): got f32 bits {got:#x}, want {want}");
                return false;
            }
            sum += want;
        }
    }
    println!("sgemm {m} {n} {k} checksum={sum}");
    true
}
