//! Charts, drawn on the server as SVG by `plotters` (no script, no outside origin).

use plotters::prelude::*;

/// Per-day counts as a bar chart: `days` are (day start, Unix seconds; count), in order.
pub(crate) fn per_day(days: &[(i64, i64)], label: &str) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 220)).into_drawing_area();
        let _ = draw(&root, days, label);
        let _ = root.present();
    }
    // plotters writes a fixed-size SVG; a viewBox lets the stylesheet scale it to the page.
    svg.replacen(
        "<svg ",
        "<svg viewBox=\"0 0 640 220\" preserveAspectRatio=\"xMinYMin meet\" ",
        1,
    )
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    days: &[(i64, i64)],
    label: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let n = u32::try_from(days.len()).unwrap_or(u32::MAX).max(1);
    let max = days.iter().map(|d| d.1).max().unwrap_or(0).max(1);
    let names: Vec<String> = days
        .iter()
        .map(|(t, _)| {
            chrono::DateTime::from_timestamp(*t, 0)
                .map(|d| d.format("%m-%d").to_string())
                .unwrap_or_default()
        })
        .collect();
    let mut chart = ChartBuilder::on(root)
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(44)
        // (A segmented range a..b has a segment per value a..=b: n days are 0..n-1.)
        .build_cartesian_2d(
            (0u32..n.saturating_sub(1).max(1)).into_segmented(),
            0i64..max + max / 10 + 1,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(label)
        .x_labels(n.min(10) as usize)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .draw()?;
    let blue = RGBColor(37, 99, 235);
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(blue.filled())
            .margin(2)
            .data(days.iter().enumerate().map(|(i, (_, c))| (i as u32, *c))),
    )?;
    Ok(())
}

/// The most days a chart draws.
pub(crate) const MAX_DAYS: usize = 400;

/// `points` (day start, count) spread over every day from `from` to `to` (inclusive), zeros
/// where a day has none.
pub(crate) fn fill_days(points: &[(i64, i64)], from: i64, to: i64) -> Vec<(i64, i64)> {
    // At most MAX_DAYS, the newest kept.
    let first = from - from.rem_euclid(86_400);
    let last = to - to.rem_euclid(86_400);
    let mut out = Vec::new();
    let mut d = last;
    while d >= first && out.len() < MAX_DAYS {
        let n = points
            .iter()
            .filter(|(t, _)| *t == d)
            .map(|(_, n)| *n)
            .sum();
        out.push((d, n));
        match d.checked_sub(86_400) {
            Some(prev) => d = prev,
            None => break,
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_an_svg_without_style_attributes() {
        let days = super::fill_days(&[(86_400 * 3, 5), (86_400 * 5, 2)], 86_400, 86_400 * 7);
        assert_eq!(days.len(), 7);
        assert_eq!(days[2], (86_400 * 3, 5));
        let long = super::fill_days(&[(86_400 * 999, 1)], 0, 86_400 * 999);
        assert_eq!(long.len(), super::MAX_DAYS);
        assert_eq!(
            long.last(),
            Some(&(86_400 * 999, 1)),
            "the newest days are kept"
        );
        let svg = super::per_day(&days, "alarms");
        assert!(svg.starts_with("<svg viewBox"), "{svg}");
        assert!(svg.contains("<rect"), "{svg}");
        // The console's CSP allows no inline style: the chart must not need one.
        assert!(!svg.contains("style="), "{svg}");
        assert!(!svg.contains("<script"), "{svg}");
    }
}
