//! Sends skiff's accelerator hypercall malformed and edge-case requests
//! and prints `case=ret` for each (ret: 0 or the errno skiff returned);
//! the test checks every value. Ends with a NOOP that must still work.
//! Argument `badstruct`: the argument struct itself outside memory, which
//! ends the guest like any hypercall with a bad argument.
#![no_std]
#![no_main]

use guest_abi::accel::{arg, op, AccelArg, HcAccel, *};
use guest_abi::println;
use guest_abi::rt::accel::{self as rt, arg as a, arg_mut as w, bits, Session};
use guest_abi::rt::{hypercall, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

fn code(r: Result<u32, i32>) -> i32 {
    r.err().unwrap_or(0)
}

/// A well-formed 4x4x4 sgemm request over `x`, `y` and `out`.
fn sgemm_read<'a>(
    dims: &'a [i64; 6],
    one: &'a [u32; 1],
    x: &'a [u32],
    y: &'a [u32],
) -> [AccelArg; 11] {
    [
        a(arg::UINT8, &[op::BLAS_SGEMM]),
        a(arg::INT64, &dims[0..1]),
        a(arg::INT64, &dims[1..2]),
        a(arg::INT64, &dims[2..3]),
        a(arg::FLOAT32, one),
        a(arg::FLOAT32_ARRAY, x),
        a(arg::INT64, &dims[3..4]),
        a(arg::FLOAT32_ARRAY, y),
        a(arg::INT64, &dims[4..5]),
        a(arg::FLOAT32, one),
        a(arg::INT64, &dims[5..6]),
    ]
}

fn main(ctx: &Ctx) -> i32 {
    if !rt::available(ctx) {
        println!("accelbad: no accelerator extension");
        return 1;
    }
    if ctx.cmdline() == "badstruct" {
        let p = (ctx.mem_size() + 4096) as usize as *mut HcAccel;
        // SAFETY: deliberately invalid: the tender must refuse it.
        unsafe { hypercall(guest_abi::hvt::Hypercall::AccelOp, p) };
        println!("accelbad: survived a bad struct");
        return 0;
    }
    let mem = ctx.mem_size();
    println!("no_session={}", code(Session::from_id(12345).noop()));
    println!("bad_hint={}", Session::new(0x1_0000).err().unwrap_or(0));
    let s = Session::new(0).expect("session");
    println!(
        "unknown_op={}",
        code(s.genop(&[a(arg::UINT8, &[200u8])], &[]))
    );
    println!(
        "image_classify={}",
        code(s.genop(&[a(arg::UINT8, &[op::IMAGE_CLASSIFY])], &[]))
    );
    println!(
        "op_wrong_type={}",
        code(s.genop(&[a(arg::UINT32, &[0u32])], &[]))
    );
    println!("no_args={}", code(s.genop(&[], &[])));

    let x = [bits::f32_from_int(1); 16];
    let y = [bits::f32_from_int(2); 16];
    let mut out = [0u32; 16];
    let one = [bits::f32_from_int(1)];
    let good = [4i64, 4, 4, 4, 4, 4];
    let rd = sgemm_read(&good, &one, &x, &y);
    let r = s.genop(&rd, &[w(arg::FLOAT32_ARRAY, &mut out)]);
    let ok = out.iter().all(|&v| bits::f32_to_int(v) == Some(8));
    println!("sgemm_ok={} result_ok={}", code(r), ok);
    println!(
        "sgemm_short={}",
        code(s.genop(&rd[..10], &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    println!("sgemm_no_output={}", code(s.genop(&rd, &[])));
    let mut bad = rd;
    bad[1].ty = arg::INT32;
    println!(
        "sgemm_wrong_type={}",
        code(s.genop(&bad, &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    let mut bad = rd;
    bad[1].size = 4;
    println!(
        "sgemm_wrong_size={}",
        code(s.genop(&bad, &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    // Well-formed requests with bad dimensions (M N K LDA LDB LDC).
    for (name, dims) in [
        ("overflow", [1i64 << 62, 4, 4, 1 << 62, 4, 4]),
        ("too_big", [64, 64, 64, 64, 64, 64]),
        ("negative", [-1, 4, 4, 4, 4, 4]),
        ("small_ld", [4, 4, 4, 2, 4, 4]),
    ] {
        let r = sgemm_read(&dims, &one, &x, &y);
        println!(
            "sgemm_{}={}",
            name,
            code(s.genop(&r, &[w(arg::FLOAT32_ARRAY, &mut out)]))
        );
    }
    let mut bad = rd;
    bad[5].gpa = mem - 8;
    bad[5].size = 64;
    println!(
        "buffer_outside={}",
        code(s.genop(&bad, &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    let mut bad = rd;
    bad[5].gpa = u64::MAX - 3;
    println!(
        "buffer_wraps={}",
        code(s.genop(&bad, &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    let mut bad = rd;
    bad[5].gpa += 1;
    bad[5].size -= 4;
    println!(
        "unaligned={}",
        code(s.genop(&bad, &[w(arg::FLOAT32_ARRAY, &mut out)]))
    );
    let mut text = w(arg::FLOAT32_ARRAY, &mut out);
    text.gpa = (main as fn(&Ctx) -> i32 as usize as u64) & !3;
    println!("output_in_text={}", code(s.genop(&rd, &[text])));
    let aliased = [a(arg::FLOAT32_ARRAY, &x)];
    println!("output_overlaps_input={}", code(s.genop(&rd, &aliased)));
    // SAFETY: the arrays named are deliberately outside memory or too
    // long; the tender must refuse them without touching them.
    unsafe {
        let far = s.request(CMD_GENOP, 0, 0, &[], &[]);
        let mut req = far;
        req.read_args = mem + 4096;
        req.nr_read = 1;
        println!("args_outside={}", rt::raw(req).ret);
        let many = [a(arg::UINT8, &[op::NOOP]); 33];
        println!(
            "too_many_args={}",
            s.request(CMD_GENOP, 0, 0, &many, &[]).ret
        );
        println!("unknown_cmd={}", s.request(99, 0, 0, &[], &[]).ret);
    }

    // MINMAX: good, then bad.
    let data = [3i64, -2, 7, 1].map(bits::f64_from_int);
    let mut mo = [0u64; 4];
    match s.minmax(&data, 0, 5, &mut mo) {
        Ok((lo, hi)) => {
            let o = mo.map(|v| bits::f64_to_int(v).unwrap_or(i64::MIN));
            let (lo, hi) = (bits::f64_to_int(lo), bits::f64_to_int(hi));
            println!("minmax=0 min={lo:?} max={hi:?} out={o:?}");
        }
        Err(e) => println!("minmax={e}"),
    }
    println!(
        "minmax_low_above_high={}",
        s.minmax(&data, 5, 0, &mut mo).err().unwrap_or(0)
    );
    println!(
        "minmax_short_output={}",
        s.minmax(&data, 0, 5, &mut mo[..2]).err().unwrap_or(0)
    );

    // Resources.
    println!(
        "resource_lib_bytes={}",
        s.register_bytes(RESOURCE_LIB, b"\x7fELF")
            .err()
            .unwrap_or(0)
    );
    println!(
        "resource_bad_type={}",
        s.register_bytes(9, b"x").err().unwrap_or(0)
    );
    println!(
        "resource_unknown_name={}",
        s.register_named(RESOURCE_MODEL, "nope").err().unwrap_or(0)
    );
    match s.register_bytes(RESOURCE_DATA, b"some model bytes") {
        Ok(id) => println!(
            "resource_bytes=0 unregister={}",
            s.unregister(id).err().unwrap_or(0)
        ),
        Err(e) => println!("resource_bytes={e}"),
    }
    println!(
        "resource_named={}",
        s.register_named(RESOURCE_MODEL, "model").err().unwrap_or(0)
    );
    println!(
        "unregister_unknown={}",
        s.unregister(999_999).err().unwrap_or(0)
    );
    // SAFETY: guest memory from 1 MiB on is readable; the size is over
    // skiff's 64 MiB cap (run with --mem of at least 80).
    let over = unsafe {
        let d = [AccelArg {
            gpa: 1 << 20,
            size: (64 << 20) + 1,
            ty: arg::BUFFER,
            custom: 0,
        }];
        s.request(CMD_RESOURCE_REGISTER, RESOURCE_DATA, 0, &d, &[])
            .ret
    };
    println!("resource_over_cap={over}");

    // EXEC through the operator's library `testlib`.
    let nums = [1u32, 2, 3, 4, 5];
    let mut sum = [0u32];
    let r = s.exec(
        "testlib",
        "sum_u32",
        &[a(arg::UINT32_ARRAY, &nums)],
        &[w(arg::UINT32, &mut sum)],
    );
    println!("exec_sum={} value={}", code(r), sum[0]);
    let none: [AccelArg; 0] = [];
    for (case, lib, sym) in [
        ("exec_fails", "testlib", "always_fails"),
        ("exec_unknown_lib", "nolib", "sum_u32"),
        ("exec_unknown_symbol", "testlib", "nosuch"),
        ("exec_dependency_symbol", "testlib", "system"),
        ("exec_data_symbol", "testlib", "exported_data"),
    ] {
        println!("{case}={}", code(s.exec(lib, sym, &none, &none)));
    }

    println!("release={}", code(s.release().map(|()| 0)));
    let s2 = Session::new(PLUGIN_CPU).expect("session");
    println!(
        "noop_after={} plugin={:#x}",
        code(s2.noop()),
        s2.noop().unwrap_or(0)
    );
    0
}
