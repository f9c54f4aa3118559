//! SVG charts drawn from the samples (plotters, SVG backend only): each lane's time over the raw
//! floor's per row and placement (`peers.svg`), and start cost against the size of the heap the
//! server holds, 4 KiB pages vs transparent huge pages (`start-heap.svg`).

use std::path::Path;

use plotters::prelude::*;

use crate::lanes::{Lane, Row};
use crate::measure::{HeapSample, Sample};
use crate::report::{self, fmt_op, median, ratio, times, Judge};

fn color(lane: Lane) -> RGBColor {
    match lane {
        Lane::Fdserver => RGBColor(31, 90, 180),
        Lane::FdserverTyped => RGBColor(120, 165, 225),
        Lane::FdserverStream => RGBColor(80, 130, 205),
        Lane::Raw => RGBColor(110, 110, 110),
        Lane::Ipc => RGBColor(230, 120, 20),
        Lane::IpcSpawn => RGBColor(245, 185, 120),
        Lane::Tarpc => RGBColor(40, 150, 70),
        Lane::Procspawn => RGBColor(140, 70, 160),
    }
}

/// The lanes drawn as bars (raw is the 1.0 line).
const BAR_LANES: [Lane; 7] = [
    Lane::Fdserver,
    Lane::FdserverStream,
    Lane::FdserverTyped,
    Lane::Ipc,
    Lane::IpcSpawn,
    Lane::Tarpc,
    Lane::Procspawn,
];

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// One row's bars: each lane that did the row, with its ratio under one placement.
type Bars = Vec<(Lane, Option<f64>)>;

/// `peers.svg`: one panel per placement, one group of bars per row.
pub fn peers_chart(path: &Path, samples: &[Sample], caption: &str) -> Result<(), String> {
    let rows: Vec<Row> = Row::ALL
        .into_iter()
        .filter(|r| samples.iter().any(|s| s.row == *r))
        .collect();
    let judges: Vec<Judge> = Judge::ALL
        .into_iter()
        .filter(|j| {
            rows.iter()
                .any(|r| !times(samples, *r, Lane::Raw, *j).is_empty())
        })
        .collect();
    if rows.is_empty() || judges.is_empty() {
        return Err("no samples to draw".into());
    }
    let lanes: Vec<Lane> = BAR_LANES
        .into_iter()
        .filter(|l| samples.iter().any(|s| s.lane == *l))
        .collect();
    // bars[judge][row] = [(lane, ratio, or None: the lane did the row, not with this placement)]
    let bars: Vec<Vec<Bars>> = judges
        .iter()
        .map(|&j| {
            rows.iter()
                .map(|&r| {
                    lanes
                        .iter()
                        .filter(|&&l| samples.iter().any(|s| s.row == r && s.lane == l))
                        .map(|&l| (l, ratio(samples, r, l, Lane::Raw, j).map(|x| x.value)))
                        .collect()
                })
                .collect()
        })
        .collect();
    // The y axis is log2 of the ratio: bars grow up from 1 (slower than raw) or down (faster).
    let values = || bars.iter().flatten().flatten().filter_map(|b| b.1);
    let lo = values().fold(0.8f64, f64::min).log2() - 0.15;
    let hi = values().fold(1.25f64, f64::max).log2() + 0.3;
    let top = hi + 0.3 * (hi - lo); // room for the row titles
    let span = top - lo;
    let panel_h = 270;
    let height = 80 + panel_h * judges.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(80);
    head.draw(&Text::new(
        caption.to_string(),
        (12, 10),
        ("sans-serif", 17),
    ))
    .map_err(err)?;
    // The legend, on one line under the caption.
    let mut x = 12;
    let mut legend: Vec<(String, RGBColor)> = vec![("raw floor (= 1)".into(), color(Lane::Raw))];
    legend.extend(lanes.iter().map(|&l| (l.name().to_string(), color(l))));
    for (name, c) in legend {
        head.draw(&Rectangle::new([(x, 48), (x + 14, 60)], c.filled()))
            .map_err(err)?;
        head.draw(&Text::new(name.clone(), (x + 19, 47), ("sans-serif", 13)))
            .map_err(err)?;
        x += 30 + 7 * name.len() as i32;
    }
    let panels = body.split_evenly((judges.len(), 1));
    let n = rows.len() as f64;
    for (pi, (panel, &judge)) in panels.iter().zip(&judges).enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: time per operation / raw floor (lower is better)",
                    judge.title()
                ),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(8)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n, lo..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|_| String::new())
            .y_desc("× raw (log scale)")
            .draw()
            .map_err(err)?;
        for tick in [
            0.25, 0.5, 0.75, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0,
        ] {
            let y = f64::log2(tick);
            if y < lo || y > hi {
                continue;
            }
            chart
                .draw_series(LineSeries::new([(0.0, y), (n, y)], RGBColor(225, 225, 225)))
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            root.draw(&Text::new(
                format!("{tick}×"),
                (px - 34, py - 6),
                ("sans-serif", 11),
            ))
            .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (n, 0.0)],
                ShapeStyle::from(&color(Lane::Raw)).stroke_width(2),
            ))
            .map_err(err)?;
        let (px, py) = chart.backend_coord(&(0.0, 0.0));
        root.draw(&Text::new("1×", (px - 22, py - 6), ("sans-serif", 11)))
            .map_err(err)?;
        for (i, &r) in rows.iter().enumerate() {
            let t = median(&times(samples, r, Lane::Raw, judge));
            let lines = [
                format!("{} {}", r.id(), r.title()),
                format!("raw floor {}", fmt_op(r, t)),
            ];
            for (j, text) in lines.into_iter().enumerate() {
                chart
                    .draw_series([Text::new(
                        text,
                        (i as f64 + 0.04, top - span * (0.02 + 0.075 * j as f64)),
                        ("sans-serif", 12),
                    )])
                    .map_err(err)?;
            }
        }
        // Each row's bars side by side, only the lanes that did the row.
        let most = bars
            .iter()
            .flatten()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let width = 0.8 / most;
        for (ri, row_bars) in bars[pi].iter().enumerate() {
            let start = ri as f64 + 0.5 - width * row_bars.len() as f64 / 2.0;
            for (bi, &(lane, v)) in row_bars.iter().enumerate() {
                let x0 = start + bi as f64 * width;
                let Some(v) = v else {
                    chart
                        .draw_series([Text::new(
                            "n/a".to_string(),
                            (x0 + width * 0.12, 0.0 + span * 0.08),
                            ("sans-serif", 11).into_font().color(&color(lane)),
                        )])
                        .map_err(err)?;
                    continue;
                };
                let y = v.log2();
                chart
                    .draw_series([Rectangle::new(
                        [(x0 + width * 0.08, 0.0), (x0 + width * 0.92, y)],
                        color(lane).filled(),
                    )])
                    .map_err(err)?;
                // The value above an upward bar, below a downward one.
                let label_y = if y >= 0.0 {
                    y + span * 0.06
                } else {
                    y - span * 0.015
                };
                chart
                    .draw_series([Text::new(
                        format!("{v:.2}"),
                        (x0 + width * 0.12, label_y),
                        ("sans-serif", 11),
                    )])
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// `start-heap.svg`: start + call + stop against heap size, log-log, four lines.
pub fn heap_chart(path: &Path, samples: &[HeapSample], caption: &str) -> Result<(), String> {
    let mut sizes: Vec<usize> = samples.iter().map(|s| s.heap_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err("no heap samples to draw".into());
    }
    // (lane, huge) → [(log2 MiB, log10 of the median, min and max in µs)]
    let line = |lane: Lane, huge: bool| -> Vec<(f64, f64, f64, f64)> {
        sizes
            .iter()
            .filter_map(|&mib| {
                let t: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.heap_mib == mib && s.huge == huge && s.lane == lane)
                    .map(|s| (s.ns_per_op / 1e3).log10())
                    .collect();
                (!t.is_empty()).then(|| {
                    (
                        (mib as f64).log2(),
                        median(&t),
                        report::min(&t),
                        report::max(&t),
                    )
                })
            })
            .collect()
    };
    let series = [
        (
            Lane::Fdserver,
            false,
            "fdserver, 4 KiB pages",
            color(Lane::Fdserver),
        ),
        (
            Lane::Fdserver,
            true,
            "fdserver, huge pages (MADV_HUGEPAGE)",
            RGBColor(60, 170, 220),
        ),
        (
            Lane::Raw,
            false,
            "raw protocol, 4 KiB pages",
            color(Lane::Raw),
        ),
        (
            Lane::Raw,
            true,
            "raw protocol, huge pages",
            RGBColor(180, 180, 180),
        ),
    ];
    let lines: Vec<_> = series
        .iter()
        .map(|&(lane, huge, label, c)| (line(lane, huge), label, c))
        .collect();
    let all = lines.iter().flat_map(|l| l.0.iter());
    let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(lo, hi), p| {
        (lo.min(p.2), hi.max(p.3))
    });
    let (x0, x1) = (
        (sizes[0] as f64).log2() - 0.5,
        (*sizes.last().unwrap() as f64).log2() + 0.5,
    );

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, lo - 0.12..hi + 0.12)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("heap held by the server's value (every page touched)")
        .y_desc("start + first call + stop (log scale)")
        .x_labels(24)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                let mib = 2f64.powf(x.round());
                if mib >= 1024.0 {
                    format!("{:.0} GiB", mib / 1024.0)
                } else {
                    format!("{mib:.0} MiB")
                }
            } else {
                String::new()
            }
        })
        .light_line_style(WHITE)
        .y_labels(0)
        .y_label_formatter(&|_| String::new())
        .draw()
        .map_err(err)?;
    // Ticks at 1, 2, 5 × 10^k µs (the axis is log10 of µs).
    let mut ticks = Vec::new();
    for k in -1..8 {
        for m in [1.0, 2.0, 5.0] {
            let v: f64 = m * 10f64.powi(k);
            if (lo - 0.12..hi + 0.12).contains(&v.log10()) {
                ticks.push(v);
            }
        }
    }
    for v in ticks {
        let y = v.log10();
        chart
            .draw_series(LineSeries::new([(x0, y), (x1, y)], RGBColor(220, 220, 220)))
            .map_err(err)?;
        let text = if v >= 1000.0 {
            format!("{} ms", v / 1000.0)
        } else {
            format!("{v} µs")
        };
        let (px, py) = chart.backend_coord(&(x0, y));
        root.draw(&Text::new(text, (px - 52, py - 6), ("sans-serif", 11)))
            .map_err(err)?;
    }
    for (points, label, c) in &lines {
        if points.is_empty() {
            continue;
        }
        let c = *c;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                ShapeStyle::from(&c).stroke_width(2),
            ))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, c.filled(), 6)),
            )
            .map_err(err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 3, c.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
