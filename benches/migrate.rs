//! Live migration over loopback TCP, through the CLI as an operator runs
//! it: a ticker guest (a timestamped line every 1 ms) of 64 and 256 MiB,
//! its memory resident (a working set of all but 8 MiB written at start),
//! idle or dirtying that working set at 16 MiB/s, moved by `skiff ctl SOCK
//! migrate tcp://127.0.0.1:PORT` into a `skiff run --incoming` after 300
//! ticks. Per case, the median over the runs of:
//! - downtime as the guest saw it: the wall-clock gap between the source's
//!   last tick and the destination's first, less the 1 ms period;
//! - the source's report line: downtime, total time, pre-copy rounds, bytes.
//!
//!   cargo bench --bench migrate [-- --bench]     (SKIFF_BENCH_RUNS, 3)
//!
//! Prints a table and draws docs/migration.svg.

mod common;
#[path = "../tests/support/migrate.rs"]
mod mig;

use mig::*;
use plotters::prelude::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
/// Ticks before the move; the ticker runs 1 ms apart for `COUNT`.
const BEFORE: usize = 300;
const COUNT: u64 = 5000;

struct Case {
    mem_mib: u64,
    rate: &'static str,
}

#[derive(Default, Clone, Copy)]
struct Run {
    guest_gap_ms: f64,
    r: Report,
}

/// One move of `c`; None (said on stderr) if it failed.
fn one(c: &Case, dir: &Path, n: usize) -> Result<Run, String> {
    let sock = dir.join(format!("control-{n}.sock"));
    let work = format!("mem={}M", c.mem_mib - 8);
    let mut s = Command::new(SKIFF);
    s.args(["run", &format!("--mem={}", c.mem_mib), "--control"])
        .arg(&sock)
        .arg(guest_images::image("ticker"))
        .args([&format!("count={COUNT}"), "period=1000", &work, c.rate]);
    let mut src = Proc::spawn(s);
    wait_path(&sock, &mut src, Duration::from_secs(20));
    let addr = format!("tcp://127.0.0.1:{}", free_port());
    let mut d = Command::new(SKIFF);
    d.args(["run", &format!("--mem={}", c.mem_mib), "--incoming", &addr])
        .arg(guest_images::image("ticker"));
    let mut dst = Proc::spawn(d);
    wait_listening(&addr, &mut dst, Duration::from_secs(20));
    src.wait_for("tick ", BEFORE, Duration::from_secs(30));
    let (code, reply, err) = ctl(
        Path::new(SKIFF),
        &sock,
        &["migrate", &addr],
        Duration::from_secs(120),
    );
    if code != Some(0) {
        return Err(format!("migrate: {reply} {err}"));
    }
    let (_, sout, serr) = src.finish(Duration::from_secs(30));
    let (dcode, dout, derr) = dst.finish(Duration::from_secs(60));
    if dcode != Some(0) {
        return Err(format!("destination exited {dcode:?}: {derr}"));
    }
    let r = report(&serr).ok_or_else(|| format!("no report line in {serr:?}"))?;
    let (a, b) = (ticks(&sout), ticks(&dout));
    let (Some(last), Some(first)) = (a.last(), b.first()) else {
        return Err("no ticks on one side".into());
    };
    if first.seq != last.seq + 1 {
        return Err(format!("ticks {} then {}", last.seq, first.seq));
    }
    let gap = first.wall.saturating_sub(last.wall) as f64 / 1e6;
    Ok(Run {
        guest_gap_ms: (gap - 1.0).max(0.0),
        r,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The medians of a case's runs.
fn summary(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        guest_gap_ms: m(|r| r.guest_gap_ms),
        r: Report {
            downtime_ms: m(|r| r.r.downtime_ms),
            total_ms: m(|r| r.r.total_ms),
            rounds: m(|r| r.r.rounds as f64) as u64,
            bytes: m(|r| r.r.bytes as f64) as u64,
        },
    }
}

fn label(c: &Case) -> String {
    let what = if c.rate == "rate=0" { "idle" } else { "16M/s" };
    format!("{}M {what}", c.mem_mib)
}

/// A panel of the plot: title, goal (ms), the two bars' values and names.
type Panel = (&'static str, f64, fn(&Run) -> [f64; 2], [&'static str; 2]);

fn plot(path: &Path, rows: &[(String, Run)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (820, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(410);
    let panels: [Panel; 2] = [
        (
            "downtime (ms)",
            10.0,
            |r| [r.guest_gap_ms, r.r.downtime_ms],
            ["guest-observed", "source's report"],
        ),
        (
            "total time (ms)",
            2000.0,
            |r| [r.r.total_ms, f64::NAN],
            ["source's report", ""],
        ),
    ];
    for (area, (title, goal, vals, names)) in [left, right].into_iter().zip(panels) {
        let top = rows
            .iter()
            .flat_map(|(_, r)| vals(r))
            .filter(|v| v.is_finite())
            .fold(goal, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("live migration, loopback: {title}"),
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..rows.len() as f64, 0f64..top)?;
        let names_of: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(rows.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 && i < names_of.len() {
                    names_of[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(title)
            .draw()?;
        let colors = [RGBColor(40, 90, 200), RGBColor(230, 140, 40)];
        for k in 0..2 {
            if names[k].is_empty() {
                continue;
            }
            let color = colors[k];
            chart
                .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
                    let x0 = i as f64 + 0.15 + 0.35 * k as f64;
                    Rectangle::new([(x0, 0.0), (x0 + 0.3, vals(r)[k])], color.filled())
                }))?
                .label(names[k])
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, goal), (rows.len() as f64, goal)],
                RED.stroke_width(1),
            ))?
            .label(format!("goal {goal} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], RED));
        common::legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let quick = common::quick();
    let runs = if quick {
        1
    } else {
        common::env_num("SKIFF_BENCH_RUNS", 3)
    };
    let cases: Vec<Case> = if quick {
        vec![Case {
            mem_mib: 64,
            rate: "rate=0",
        }]
    } else {
        [64, 256]
            .into_iter()
            .flat_map(|m| ["rate=0", "rate=16M"].map(|rate| Case { mem_mib: m, rate }))
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("skiff-bench-mig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = Vec::new();
    let mut n = 0;
    for c in &cases {
        let mut ok = Vec::new();
        for _ in 0..runs {
            n += 1;
            match one(c, &dir, n) {
                Ok(r) => ok.push(r),
                Err(e) => eprintln!("migrate bench: {}: {e}", label(c)),
            }
        }
        if !ok.is_empty() {
            rows.push((label(c), summary(&ok), ok.len()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "live migration over loopback TCP, medians; load average {}",
        load.trim()
    );
    println!(
        "{:<18} {:>12} {:>12} {:>10} {:>7} {:>10} {:>5}",
        "guest", "guest gap ms", "downtime ms", "total ms", "rounds", "MiB sent", "runs"
    );
    for (name, s, k) in &rows {
        println!(
            "{:<18} {:>12.2} {:>12.2} {:>10.1} {:>7} {:>10.1} {:>5}",
            name,
            s.guest_gap_ms,
            s.r.downtime_ms,
            s.r.total_ms,
            s.r.rounds,
            s.r.bytes as f64 / (1 << 20) as f64,
            k
        );
    }
    if quick {
        assert_eq!(rows.len(), cases.len(), "a migration failed");
        return;
    }
    let svg = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/migration.svg");
    let plotted: Vec<(String, Run)> = rows.iter().map(|(n, s, _)| (n.clone(), *s)).collect();
    match plot(&svg, &plotted) {
        Ok(()) => println!("plot: {}", svg.display()),
        Err(e) => eprintln!("migrate bench: cannot draw {}: {e}", svg.display()),
    }
}
