//! The results as a Markdown table, and the head-height-over-time plot as a PNG.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// One line of the table.
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub result: String,
    pub target: String,
    /// `None` where there is no target to meet.
    pub ok: Option<bool>,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, result: impl Into<String>) -> Row {
        Row {
            section,
            what: what.into(),
            result: result.into(),
            target: String::new(),
            ok: None,
        }
    }

    /// With a target and whether it was met.
    pub fn target(mut self, target: impl Into<String>, ok: bool) -> Row {
        self.target = target.into();
        self.ok = Some(ok);
        self
    }
}

/// The Markdown table of `rows` under a heading line. The targets are set for the full sizes;
/// at the quick sizes (`indicative`) whether they were met is shown in parentheses, as a hint.
pub fn markdown(heading: &str, rows: &[Row], indicative: bool) -> String {
    let note = if indicative {
        "\n\nQuick sizes: the targets are set for the full run (`make bench`); \"met\" is a hint."
    } else {
        ""
    };
    let mut out =
        format!("{heading}{note}\n\n| # | measurement | result | target | met |\n|---|---|---|---|---|\n");
    for r in rows {
        let met = match (r.ok, indicative) {
            (Some(true), false) => "yes",
            (Some(false), false) => "**no**",
            (Some(true), true) => "(yes)",
            (Some(false), true) => "(no)",
            (None, _) => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.section, r.what, r.result, r.target, met
        );
    }
    out
}

/// Thousands with commas.
pub fn int(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1024.0 * 1024.0))
}

pub fn mb_s(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

/// A font for the plot's labels, if the machine has one; without it the plot has no text.
fn load_font() -> bool {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    for path in candidates {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Head height over time, one panel per run: (title, [(seconds, height)]).
pub fn plot(path: &Path, runs: &[(String, Vec<(f64, u64)>)]) -> anyhow::Result<()> {
    let text = load_font();
    let cols = 2usize;
    let rows = runs.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (1200, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, cols));
    for ((title, samples), area) in runs.iter().zip(panels.iter()) {
        let t_max = samples.iter().map(|s| s.0).fold(0.1, f64::max);
        let h_max = samples.iter().map(|s| s.1).max().unwrap_or(1).max(1) as f64;
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 18))
                .x_label_area_size(30)
                .y_label_area_size(70);
        }
        let mut chart = builder.build_cartesian_2d(0.0..t_max * 1.02, 0.0..h_max * 1.05)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds").y_desc("head height");
        } else {
            mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        chart.draw_series(LineSeries::new(
            samples.iter().map(|&(t, h)| (t, h as f64)),
            BLUE.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_tables_mark_targets_as_hints() {
        let rows = [
            Row::new("2a", "sync", "1 blocks/s").target(">= 2", false),
            Row::new("5", "restart", "0.1 s").target("<= 1 s", true),
            Row::new("1", "limit", "3 blocks/s"),
        ];
        let full = markdown("## run", &rows, false);
        assert!(
            full.contains("| >= 2 | **no** |") && full.contains("| <= 1 s | yes |"),
            "{full}"
        );
        assert!(!full.contains("hint"), "{full}");
        let quick = markdown("## run", &rows, true);
        assert!(
            quick.contains("| >= 2 | (no) |") && quick.contains("| <= 1 s | (yes) |"),
            "{quick}"
        );
        assert!(quick.contains("targets are set for the full run"), "{quick}");
        assert!(quick.ends_with("| 1 | limit | 3 blocks/s |  |  |\n"), "{quick}");
    }
}
