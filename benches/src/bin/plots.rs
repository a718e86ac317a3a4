//! `plots`: the SVG figures of `docs/benchmarks.md`, from the runner's output.
//!
//! ```sh
//! cargo run --release -p fielding-bench -- --only http,contention,scale --csv target/bench-data \
//!     | tee target/bench-data/figures.txt
//! cargo run --release -p fielding-bench --bin plots -- --data target/bench-data --out docs/benchmarks
//! ```
//!
//! Reads `contention.csv` and `scale.csv` (written by `--csv`) and
//! `figures.txt` (the runner's `name value` lines), and writes
//! `throughput-vs-clients.svg`, `latency-percentiles.svg` and
//! `cost-vs-size.svg`. Each point is the median over the rounds of one
//! configuration, as in the printed figures. Text is measured with a font
//! file read at run time (`--font`, default DejaVu Sans as Debian installs
//! it); the SVGs name the font family and leave drawing it to the viewer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::prelude::*;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 560);

#[derive(Debug, thiserror::Error)]
enum PlotError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Data { path: PathBuf, what: String },
    #[error("the font {0} is not a usable TrueType/OpenType file")]
    Font(PathBuf),
    #[error("drawing {file}: {what}")]
    Draw { file: String, what: String },
}

struct Args {
    data: PathBuf,
    out: PathBuf,
    font: PathBuf,
}

fn parse_args() -> Result<Args, PlotError> {
    let mut data = None;
    let mut out = None;
    let mut font = PathBuf::from(DEFAULT_FONT);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| PlotError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--data" => data = Some(value()?),
            "--out" => out = Some(value()?),
            "--font" => font = value()?,
            "-h" | "--help" => {
                return Err(PlotError::Usage(
                    "usage: plots --data DIR --out DIR [--font FILE.ttf]".to_owned(),
                ))
            }
            other => return Err(PlotError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(Args {
        data: data.ok_or_else(|| PlotError::Usage("--data DIR is required".to_owned()))?,
        out: out.ok_or_else(|| PlotError::Usage("--out DIR is required".to_owned()))?,
        font,
    })
}

fn read(path: &Path) -> Result<String, PlotError> {
    std::fs::read_to_string(path).map_err(|source| PlotError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A CSV file as rows of named columns (the runner's files have no quoting).
fn csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>, PlotError> {
    let text = read(path)?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| PlotError::Data {
            path: path.to_owned(),
            what: "empty file".into(),
        })?
        .split(',')
        .map(str::to_owned)
        .collect();
    Ok(lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| header.iter().cloned().zip(line.split(',').map(str::to_owned)).collect())
        .collect())
}

fn number(path: &Path, row: &BTreeMap<String, String>, column: &str) -> Result<f64, PlotError> {
    row.get(column)
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| PlotError::Data {
            path: path.to_owned(),
            what: format!("column {column:?} missing or not a number in {row:?}"),
        })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Series name → points (x, median y), from `rows` grouped by `series`
/// and `x`.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn group(
    path: &Path,
    rows: &[BTreeMap<String, String>],
    series: impl Fn(&BTreeMap<String, String>) -> Option<String>,
    x: &str,
    y: &str,
) -> Result<Series, PlotError> {
    let mut raw: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for row in rows {
        let Some(name) = series(row) else { continue };
        let xv = number(path, row, x)?;
        let yv = number(path, row, y)?;
        raw.entry(name).or_default().entry(xv.to_bits()).or_default().push(yv);
    }
    Ok(raw
        .into_iter()
        .map(|(name, points)| {
            let mut line: Vec<(f64, f64)> = points
                .into_iter()
                .map(|(xb, ys)| (f64::from_bits(xb), median(ys)))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name, line)
        })
        .collect())
}

fn color(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    PALETTE[i % PALETTE.len()]
}

/// A log-log line chart of `series`.
fn log_log(
    out: &Path,
    file: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &Series,
) -> Result<(), PlotError> {
    let draw = |what: String| PlotError::Draw {
        file: file.to_owned(),
        what,
    };
    let points = series.values().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        if x > 0.0 && y > 0.0 {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    if x0 > x1 {
        return Err(draw("no positive data to plot".into()));
    }
    let path = out.join(file);
    let root = SVGBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((x0 / 1.3..x1 * 1.3).log_scale(), (y0 / 1.5..y1 * 1.5).log_scale())
        .map_err(|e| draw(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| draw(e.to_string()))?;
    for (i, (name, line)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(line.iter().copied(), c.stroke_width(2)))
            .map_err(|e| draw(e.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| draw(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| draw(e.to_string()))?;
    root.present().map_err(|e| draw(e.to_string()))
}

/// 1200 → "1.2k", 3000000 → "3M".
fn short(v: f64) -> String {
    let (value, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

fn throughput_vs_clients(args: &Args) -> Result<(), PlotError> {
    let path = args.data.join("contention.csv");
    let rows = csv(&path)?;
    let series = group(
        &path,
        &rows,
        |row| {
            let mode = row.get("mode")?;
            let name = match mode.as_str() {
                "one" => "one run",
                "distinct" => "distinct runs",
                _ => return None,
            };
            Some(format!("{} ({name})", row.get("store")?))
        },
        "clients",
        "updates_per_sec",
    )?;
    log_log(
        &args.out,
        "throughput-vs-clients.svg",
        "Successful updates per second vs concurrent clients (HTTP, If-Match, retry on 412)",
        "concurrent clients",
        "successful updates / s",
        &series,
    )
}

/// Update cost at each size divided by the cost at the smallest size in
/// the same round (the figure the scale target is about): rounds measured
/// later can be slower for every size alike (the in-memory store's history
/// grows through the section), which per-size medians would mistake for
/// growth with the data.
fn cost_vs_size(args: &Args) -> Result<(), PlotError> {
    let path = args.data.join("scale.csv");
    let rows = csv(&path)?;
    let mut smallest: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for row in &rows {
        let (Some(store), Some(round)) = (row.get("store"), row.get("round")) else {
            continue;
        };
        let runs = number(&path, row, "runs")?;
        let cost = number(&path, row, "update_ns")?;
        let entry = smallest.entry((store.clone(), round.clone())).or_insert((runs, cost));
        if runs < entry.0 {
            *entry = (runs, cost);
        }
    }
    let mut relative = Vec::new();
    for row in &rows {
        let (Some(store), Some(round)) = (row.get("store"), row.get("round")) else {
            continue;
        };
        let Some(&(_, base)) = smallest.get(&(store.clone(), round.clone())) else {
            continue;
        };
        let mut with_ratio = row.clone();
        with_ratio.insert("ratio".into(), (number(&path, row, "update_ns")? / base).to_string());
        relative.push(with_ratio);
    }
    let series = group(&path, &relative, |row| row.get("store").cloned(), "runs", "ratio")?;
    log_log(
        &args.out,
        "cost-vs-size.svg",
        "Update cost vs runs in the store, relative to 1,000 runs in the same round (target: within 1.5)",
        "runs in the store",
        "cost / cost at 1,000 runs",
        &series,
    )
}

fn latency_percentiles(args: &Args) -> Result<(), PlotError> {
    let path = args.data.join("figures.txt");
    let text = read(&path)?;
    let figures: BTreeMap<&str, f64> = text
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name, value.trim().parse().ok()?))
        })
        .collect();
    let mut series = Series::new();
    for (load, prefix_of) in [("PUT", "http_put_"), ("GET", "http_get_")] {
        for target in ["bare", "memory", "sqlite", "postgres"] {
            let prefix = match (load, target) {
                ("PUT", "bare") => "http_bare_".to_owned(),
                _ => format!("{prefix_of}{target}_"),
            };
            let line: Vec<(f64, f64)> = [(50.0, "p50_us"), (99.0, "p99_us"), (99.9, "p999_us")]
                .into_iter()
                .filter_map(|(p, suffix)| figures.get(format!("{prefix}{suffix}").as_str()).map(|v| (p, *v)))
                .collect();
            if !line.is_empty() {
                series.insert(format!("{load} {target}"), line);
            }
        }
    }
    if series.is_empty() {
        return Err(PlotError::Data {
            path,
            what: "no http_*_p50_us / _p99_us / _p999_us lines (run the http section)".into(),
        });
    }
    // The x axis is the percentile on a "nines" scale: 50, 99, 99.9 as
    // 1 / (1 - p) = 2, 100, 1000, so the tail gets room.
    let nines: Series = series
        .into_iter()
        .map(|(name, line)| (name, line.into_iter().map(|(p, v)| (100.0 / (100.0 - p), v)).collect()))
        .collect();
    log_log(
        &args.out,
        "latency-percentiles.svg",
        "Latency percentiles through the server (wrk, 32 connections; x: 2 = p50, 100 = p99, 1k = p99.9)",
        "1 / (1 - percentile)",
        "latency (µs)",
        &nines,
    )
}

fn run() -> Result<(), PlotError> {
    let args = parse_args()?;
    let bytes = std::fs::read(&args.font).map_err(|source| PlotError::Read {
        path: args.font.clone(),
        source,
    })?;
    // plotters keeps fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::Font(args.font.clone()))?;
    std::fs::create_dir_all(&args.out).map_err(|source| PlotError::Read {
        path: args.out.clone(),
        source,
    })?;
    throughput_vs_clients(&args)?;
    latency_percentiles(&args)?;
    cost_vs_size(&args)?;
    eprintln!("plots: wrote 3 SVG files to {}", args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plots: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_labels() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(short(1200.0), "1.2k");
        assert_eq!(short(3_000_000.0), "3M");
        assert_eq!(short(64.0), "64");
    }

    #[test]
    fn rows_group_into_median_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scale.csv");
        std::fs::write(
            &path,
            "store,runs,update_ns\nmemory,1000,10\nmemory,1000,30\nmemory,1000,20\nsqlite,1000,5\nmemory,100000,12\n",
        )
        .unwrap();
        let rows = csv(&path).unwrap();
        let series = group(&path, &rows, |r| r.get("store").cloned(), "runs", "update_ns").unwrap();
        assert_eq!(series["memory"], vec![(1000.0, 20.0), (100000.0, 12.0)]);
        assert_eq!(series["sqlite"], vec![(1000.0, 5.0)]);
        std::fs::write(&path, "store,runs,update_ns\nmemory,lots,1\n").unwrap();
        let rows = csv(&path).unwrap();
        assert!(group(&path, &rows, |r| r.get("store").cloned(), "runs", "update_ns").is_err());
    }
}
