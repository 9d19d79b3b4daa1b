//! SVG plots: latency by percentile at each fixed rate (one line per scenario) and throughput
//! at saturation (one bar per scenario).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Summary;
use crate::runner::LoadPoint;

const COLORS: [RGBColor; 5] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// Percentile → x position: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 …
fn nines(percentile: f64) -> f64 {
    let rest = (100.0 - percentile).max(0.001) / 100.0;
    (-rest.log10()).min(5.0)
}

pub fn write_all(summaries: &[Summary], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut rates: Vec<f64> = summaries
        .iter()
        .filter_map(|s| match s.point {
            LoadPoint::Rate { rps } => Some(rps),
            LoadPoint::Saturation => None,
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    for rps in rates {
        let point = LoadPoint::Rate { rps };
        let series: Vec<&Summary> = summaries.iter().filter(|s| s.point == point).collect();
        let path = dir.join(format!("latency-{rps:.0}rps.svg"));
        latency_plot(
            &series,
            &format!("Latency by percentile at {rps:.0} req/s (open loop)"),
            &path,
        )?;
        written.push(path);
    }
    let saturated: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.point == LoadPoint::Saturation)
        .collect();
    if !saturated.is_empty() {
        let path = dir.join("saturation.svg");
        throughput_plot(&saturated, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn latency_plot(series: &[&Summary], title: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = series
        .iter()
        .flat_map(|s| s.curve.iter().map(|(_, us)| us / 1000.0))
        .fold(0.1_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..5.0_f64, 0.0..max_ms)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => "max".into(),
        })
        .x_labels(6)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = s
            .curve
            .iter()
            .map(|(p, us)| (nines(*p), us / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.scenario.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn throughput_plot(series: &[&Summary], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series.iter().map(|s| s.throughput).fold(1.0_f64, f64::max) * 1.15;
    let names: Vec<&str> = series.iter().map(|s| s.scenario.as_str()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput at saturation (closed loop)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..series.len() as f64, 0.0..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("requests / s")
        .x_labels(series.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                names
                    .get(i as usize)
                    .map_or(String::new(), |n| n.to_string())
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, s.throughput)],
            color.filled(),
        )))?;
    }
    root.present()?;
    Ok(())
}
