//! The PNG plot: one box per contender (time to ready: whiskers min to
//! max, box p25 to p75, a bar at the median), and beside kiln's box its
//! boot phases stacked (medians), so the eye sees where the time goes;
//! under the key, the idle rows as bars (memory per instance).
//!
//! Drawn with plotters' bitmap backend only. Text needs a TrueType font,
//! read at run time (`$KILN_BENCH_FONT` or a DejaVu/Liberation sans from
//! the usual places) so building kiln needs no fontconfig; without one
//! the plot is drawn without its labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::Report;

const SIZE: (u32, u32) = (1000, 600);
/// The strip on the right that holds the key.
const KEY_WIDTH: u32 = 220;
const FONT_FAMILY: &str = "sans-serif";
const FONT_PLACES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw the plot {path}: {reason}; check that --out is a writable directory")]
    Draw { path: String, reason: String },
}

/// Registers a font once per process; whether text can be drawn.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("KILN_BENCH_FONT").map(PathBuf::from);
        let places = env.into_iter().chain(FONT_PLACES.iter().map(PathBuf::from));
        for place in places {
            if let Ok(bytes) = std::fs::read(&place) {
                // Fonts live as long as the process: plotters wants 'static.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Colours for kiln's phase segments, in boot order.
const PHASE_COLOURS: &[RGBColor] = &[
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// The key: how to read a box, and the colour of each phase.
fn draw_key<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    phased: Option<(&str, &[(String, u64)])>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = (FONT_FAMILY, 14).into_font();
    let mut lines: Vec<(String, Option<RGBColor>)> = vec![
        ("box: p25 to p75".into(), None),
        ("red bar: median".into(), None),
        ("whiskers: min to max".into(), None),
    ];
    if let Some((name, phases)) = phased {
        lines.push((String::new(), None));
        lines.push((format!("{name} phases (medians):"), None));
        for (k, (phase, _)) in phases.iter().enumerate() {
            let colour = PHASE_COLOURS[k % PHASE_COLOURS.len()];
            lines.push((format!("until {phase}"), Some(colour)));
        }
    }
    for (i, (text, swatch)) in lines.into_iter().enumerate() {
        let y = 70 + 22 * i as i32;
        let mut x = 10;
        if let Some(colour) = swatch {
            area.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], colour.filled()))?;
            x += 22;
        }
        area.draw(&Text::new(text, (x, y), font.clone()))?;
    }
    Ok(())
}

/// Where the key ends and the memory bars begin, in the key strip.
const KEY_HEIGHT: u32 = 340;

/// The idle rows: per contender a bar of its total memory per instance,
/// with its overhead as a darker bar inside, to one scale.
fn draw_memory<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let rows: Vec<(&str, u64, u64)> = report
        .contenders
        .iter()
        .filter_map(|c| {
            let idle = c.idle.as_ref()?.as_ref().ok()?;
            Some((c.name.as_str(), idle.overhead_kib, idle.total_kib))
        })
        .collect();
    let scale = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(0).max(1) as f64;
    let font = (FONT_FAMILY, 13).into_font();
    let width = area.dim_in_pixel().0 as f64 - 20.0;
    let length = |kib: u64| ((kib as f64 / scale) * width).round().max(1.0) as i32;
    let mut y = 0;
    if text && !rows.is_empty() {
        area.draw(&Text::new("idle MiB per instance:", (10, y), font.clone()))?;
        area.draw(&Text::new("overhead (dark), total", (10, y + 16), font.clone()))?;
        y += 38;
    }
    for (name, overhead, total) in rows {
        if text {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let label = format!("{name} {:.1} / {:.1}", mib(overhead), mib(total));
            area.draw(&Text::new(label, (10, y), font.clone()))?;
            y += 15;
        }
        let light = RGBColor(0xa6, 0xc8, 0xe8).filled();
        area.draw(&Rectangle::new([(10, y), (10 + length(total), y + 10)], light))?;
        let dark = PHASE_COLOURS[0].filled();
        area.draw(&Rectangle::new(
            [(10, y + 2), (10 + length(overhead), y + 8)],
            dark,
        ))?;
        y += 16;
    }
    Ok(())
}

/// Draws `report` as a PNG at `path`.
pub fn write_png(report: &Report, path: &Path) -> Result<(), PlotError> {
    draw(report, path, font_available()).map_err(|reason| PlotError::Draw {
        path: path.display().to_string(),
        reason,
    })
}

fn draw(report: &Report, path: &Path, text: bool) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let shown: Vec<_> = report
        .contenders
        .iter()
        .filter_map(|c| Some((c, c.ready()?, c.phase_medians())))
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    let top = shown
        .iter()
        .flat_map(|(_, r, phases)| std::iter::once(r.max).chain(phases.iter().map(|p| p.1)))
        .max()
        // Headroom above the tallest box for its name.
        .map_or(1.0, |us| ms(us) * 1.15)
        .max(0.001);
    let slots = shown.len().max(1) as f64;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (plot_area, key_area) = root.split_horizontally(SIZE.0 - KEY_WIDTH);
    let mut builder = ChartBuilder::on(&plot_area);
    builder.margin(20);
    if text {
        let title = format!(
            "kiln bench boot: ms from start to ready, {} runs, {} mode",
            report.runs, report.mode
        );
        builder
            .caption(title, (FONT_FAMILY, 22))
            .y_label_area_size(60)
            .x_label_area_size(10);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..slots, 0.0..top)
        .map_err(|x| e(&x))?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0).light_line_style(WHITE.mix(0.0));
    if text {
        mesh.y_desc("ms").label_style((FONT_FAMILY, 14));
    } else {
        mesh.y_labels(0);
    }
    mesh.draw().map_err(|x| e(&x))?;

    let stroke = BLACK.stroke_width(2);
    for (i, (c, r, phases)) in shown.iter().enumerate() {
        let x = i as f64;
        let (left, right, mid) = if phases.is_empty() {
            (x + 0.3, x + 0.7, x + 0.5)
        } else {
            (x + 0.1, x + 0.45, x + 0.275)
        };
        let box_fill = RGBColor(0xa6, 0xc8, 0xe8).filled();
        let elements = [
            Rectangle::new([(left, ms(r.p25)), (right, ms(r.p75))], box_fill),
            Rectangle::new([(left, ms(r.p25)), (right, ms(r.p75))], stroke),
        ];
        chart.draw_series(elements).map_err(|x| e(&x))?;
        let lines = [
            vec![(mid, ms(r.min)), (mid, ms(r.p25))],
            vec![(mid, ms(r.p75)), (mid, ms(r.max))],
            vec![(mid - 0.08, ms(r.min)), (mid + 0.08, ms(r.min))],
            vec![(mid - 0.08, ms(r.max)), (mid + 0.08, ms(r.max))],
        ];
        chart
            .draw_series(
                lines
                    .into_iter()
                    .map(|l| PathElement::new(l, BLACK.stroke_width(1))),
            )
            .map_err(|x| e(&x))?;
        let median = PathElement::new(
            vec![(left, ms(r.median)), (right, ms(r.median))],
            RGBColor(0xc0, 0x20, 0x20).stroke_width(3),
        );
        chart.draw_series([median]).map_err(|x| e(&x))?;
        // kiln's phases stacked: each segment from the previous phase.
        let mut from = 0.0;
        for (k, (_, us)) in phases.iter().enumerate() {
            let colour = PHASE_COLOURS[k % PHASE_COLOURS.len()];
            let to = ms(*us).max(from);
            let segment = Rectangle::new([(x + 0.55, from), (x + 0.9, to)], colour.filled());
            chart.draw_series([segment]).map_err(|x| e(&x))?;
            from = to;
        }
        if text {
            let label = format!("{} (median {:.1} ms)", c.name, ms(r.median));
            let style =
                TextStyle::from((FONT_FAMILY, 16).into_font()).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ));
            let above = ms(r.max).max(phases.last().map_or(0.0, |p| ms(p.1))) + top * 0.02;
            chart
                .draw_series([Text::new(label, (x + 0.5, above), style)])
                .map_err(|x| e(&x))?;
        }
    }
    let (key_area, memory_area) = key_area.split_vertically(KEY_HEIGHT);
    if text {
        let phased = shown.iter().find(|s| !s.2.is_empty());
        draw_key(&key_area, phased.map(|s| (s.0.name.as_str(), s.2.as_slice()))).map_err(|x| e(&x))?;
    }
    draw_memory(&memory_area, report, text).map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::example;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn check_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let image = image::load_from_memory(&bytes).unwrap();
        assert_eq!((image.width(), image.height()), SIZE);
        // Not a blank page: the boxes and segments are coloured.
        let rgb = image.to_rgb8();
        let coloured = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(coloured > 5_000, "{coloured} non-white pixels");
    }

    #[test]
    fn png_with_labels_decodes() {
        let dir = scratch("labels");
        let path = dir.join("boot.png");
        write_png(&example(), &path).unwrap();
        check_png(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_with_idle_rows_decodes_and_draws_their_bars() {
        let dir = scratch("idle");
        let path = dir.join("boot.png");
        let report = crate::bench::report::tests::with_idle();
        write_png(&report, &path).unwrap();
        check_png(&path);
        // The dark overhead bar sits in the key strip's lower part.
        let image = image::open(&path).unwrap().to_rgb8();
        let strip = (SIZE.0 - KEY_WIDTH)..SIZE.0;
        let dark = PHASE_COLOURS[0];
        let found = strip
            .flat_map(|x| (KEY_HEIGHT..SIZE.1).map(move |y| (x, y)))
            .any(|(x, y)| image.get_pixel(x, y).0 == [dark.0, dark.1, dark.2]);
        assert!(found, "no overhead bar under the key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_without_a_font_still_decodes() {
        let dir = scratch("nofont");
        let path = dir.join("boot.png");
        draw(&example(), &path, false).unwrap();
        check_png(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_of_nothing_and_a_bad_path() {
        let dir = scratch("empty");
        let mut report = example();
        report.contenders.clear();
        write_png(&report, &dir.join("boot.png")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let e = write_png(&example(), &dir.join("boot.png"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot draw the plot"), "{e}");
    }
}
