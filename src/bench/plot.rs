//! `skiff bench --plot FILE.svg`: a picture of a benchmark's runs, drawn
//! with `plotters`' SVG backend. Left, per tender, a stacked bar of the
//! median time spent in each phase from exec to exit (a tender without
//! skiff's phase marks is one segment); right, the exec-to-exit
//! distribution of every run, one curve per tender (the share of runs
//! done by each time).

use super::harness::Report;
use crate::marks::{COUNT, NAMES};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the plot could not be drawn.
#[derive(Debug, Error)]
#[error("cannot draw the plot {}: {msg}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    pub msg: String,
}

/// One bar of the left panel: a tender and its phases (name, µs).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub tender: String,
    pub segments: Vec<(String, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The bars: skiff's phases as medians of each run's phase lengths (so
/// the segments of one bar add up to about its median exec-to-exit), and
/// the compared tender's exec-to-exit as one segment.
pub fn bars(r: &Report) -> Vec<Bar> {
    let s = &r.samples;
    let mut segments = Vec::new();
    // Phase i runs from mark i-1 (exec for the first) to mark i; the
    // last, "exit", from the halt mark to the process's exit.
    for i in 0..=COUNT {
        let lens: Vec<f64> = s
            .phases
            .iter()
            .zip(&s.total)
            .map(|(p, &total)| {
                let start = if i == 0 { 0 } else { p[i - 1] };
                let end = if i == COUNT { total } else { p[i] };
                end.saturating_sub(start) as f64 / 1000.0
            })
            .collect();
        let name = if i == COUNT { "exit" } else { NAMES[i] };
        segments.push((name.to_string(), median(lens)));
    }
    let mut out = vec![Bar {
        tender: "skiff".into(),
        segments,
    }];
    if let Some(c) = &r.compare {
        let total: Vec<f64> = s.other_total.iter().map(|&t| t as f64 / 1000.0).collect();
        out.push(Bar {
            tender: short(&c.program),
            segments: vec![("exec to exit (no marks)".into(), median(total))],
        });
    }
    out
}

/// A program's file name.
fn short(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string())
}

/// Each tender's exec-to-exit times in µs, sorted, with its name.
pub fn distributions(r: &Report) -> Vec<(String, Vec<f64>)> {
    let sorted = |v: &[u64]| {
        let mut us: Vec<f64> = v.iter().map(|&t| t as f64 / 1000.0).collect();
        us.sort_by(f64::total_cmp);
        us
    };
    let mut out = vec![("skiff".to_string(), sorted(&r.samples.total))];
    if let Some(c) = &r.compare {
        out.push((short(&c.program), sorted(&r.samples.other_total)));
    }
    out
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
];

/// Draws the report's plot to `path` (SVG).
pub fn write(r: &Report, path: &Path) -> Result<(), PlotError> {
    draw(r, path).map_err(|msg| PlotError {
        path: path.to_path_buf(),
        msg,
    })?;
    // plotters reports some write errors only on drop; check the result.
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err(PlotError {
            path: path.to_path_buf(),
            msg: "nothing was written".into(),
        }),
        Err(e) => Err(PlotError {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }),
    }
}

fn draw(r: &Report, path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let title = format!(
        "skiff bench: {} ({} runs)",
        r.image_args
            .iter()
            .rev()
            .find(|a| a.ends_with(".hvt"))
            .map(|a| short(a))
            .unwrap_or_default(),
        r.runs
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(640);

    // Left: stacked phase bars, one row per tender.
    let bars = bars(r);
    let widest = bars
        .iter()
        .map(|b| b.segments.iter().map(|s| s.1).sum::<f64>())
        .fold(0.0, f64::max)
        .max(1.0);
    let n = bars.len();
    let names: Vec<String> = bars.iter().map(|b| b.tender.clone()).collect();
    let mut chart = ChartBuilder::on(&left)
        .caption("median time per phase, from exec (µs)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..widest * 1.05, -0.5..(n as f64 - 0.5))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("µs")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    let mut seen: Vec<String> = Vec::new();
    for (row, bar) in bars.iter().enumerate() {
        let y = row as f64;
        let mut x = 0.0;
        for (name, len) in &bar.segments {
            // One color and one legend entry per phase name.
            let first = !seen.contains(name);
            if first {
                seen.push(name.clone());
            }
            let idx = seen.iter().position(|s| s == name).unwrap_or(0);
            let color = COLORS[idx % COLORS.len()];
            let series = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y - 0.3), (x + len, y + 0.3)],
                    color.filled(),
                )))
                .map_err(|x| e(&x))?;
            if first {
                series
                    .label(format!("{name} ({len:.0})"))
                    .legend(move |(lx, ly)| {
                        Rectangle::new([(lx, ly - 5), (lx + 10, ly + 5)], color.filled())
                    });
            }
            x += len;
        }
    }
    legend(&mut chart)?;

    // Right: the exec-to-exit distribution (empirical CDF) per tender.
    let dists = distributions(r);
    let (lo, hi) = dists
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold((f64::MAX, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
    // A log axis: start-up times have long tails on a busy host.
    let (lo, hi) = if lo > hi || lo <= 0.0 {
        (1.0, 10.0)
    } else {
        (lo * 0.9, hi * 1.1)
    };
    let mut cdf = ChartBuilder::on(&right)
        .caption("exec to exit, every run", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)
        .map_err(|x| e(&x))?;
    cdf.configure_mesh()
        .x_desc("µs (log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("% of runs done")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, v)) in dists.iter().enumerate() {
        let color = COLORS[(i * 2 + 1) % COLORS.len()];
        let n = v.len().max(1) as f64;
        let points = v
            .iter()
            .enumerate()
            .flat_map(|(k, &t)| [(t, k as f64 * 100.0 / n), (t, (k + 1) as f64 * 100.0 / n)]);
        cdf.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(format!("{name} (median {:.0} µs)", median(v.clone())))
            .legend(move |(lx, ly)| {
                PathElement::new([(lx, ly), (lx + 16, ly)], color.stroke_width(2))
            });
    }
    legend(&mut cdf)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The legend both panels draw: lower right, on a light box.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::harness::{CompareReport, RatioStat, Samples, Stat};

    fn report() -> Report {
        let st = Stat {
            median_us: 0.0,
            min_us: 0.0,
            max_us: 0.0,
        };
        // Marks at 100, 100, 300, 600, 700, 900 µs; exit at 1000 µs.
        let marks = [100_000, 100_000, 300_000, 600_000, 700_000, 900_000];
        Report {
            image_args: vec!["hello.hvt".into()],
            runs: 3,
            phases: vec![],
            exits_per_run: 2,
            max_rss_kib: 0,
            compare: Some(CompareReport {
                program: "/usr/bin/solo5-hvt".into(),
                exec_to_exit: st.clone(),
                max_rss_kib: 0,
                ratio: RatioStat {
                    median: 1.0,
                    min: 1.0,
                    max: 1.0,
                },
            }),
            main_to_first_instruction: st.clone(),
            request_to_first_instruction: st,
            samples: Samples {
                phases: vec![marks; 3],
                total: vec![1_000_000, 1_200_000, 1_000_000],
                other_total: vec![2_000_000, 3_000_000, 2_500_000],
            },
        }
    }

    #[test]
    fn bars_split_skiff_into_phases_and_the_other_into_one() {
        let b = bars(&report());
        assert_eq!(b.len(), 2);
        let lens: Vec<f64> = b[0].segments.iter().map(|s| s.1).collect();
        assert_eq!(lens, [100.0, 0.0, 200.0, 300.0, 100.0, 200.0, 100.0]);
        assert_eq!(b[0].segments.last().unwrap().0, "exit");
        assert_eq!(b[1].tender, "solo5-hvt");
        assert_eq!(
            b[1].segments,
            vec![("exec to exit (no marks)".into(), 2500.0)]
        );
        let d = distributions(&report());
        assert_eq!(d[0].1, [1000.0, 1000.0, 1200.0]);
        assert_eq!(d[1].1, [2000.0, 2500.0, 3000.0]);
    }

    #[test]
    fn the_svg_names_both_tenders_and_every_phase() {
        let path =
            std::env::temp_dir().join(format!("skiff-debug-plot-{}.svg", std::process::id()));
        write(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for word in [
            "skiff",
            "solo5-hvt",
            "kvm_ready",
            "first_hypercall",
            "exec to exit",
        ] {
            assert!(svg.contains(word), "no {word} in the SVG");
        }
        let bad = write(&report(), Path::new("/proc/nonexistent/x.svg")).unwrap_err();
        assert!(bad.to_string().contains("/proc/nonexistent/x.svg"), "{bad}");
    }
}
