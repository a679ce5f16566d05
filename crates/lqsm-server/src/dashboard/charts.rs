//! Charts drawn on the server as SVG: no script, nothing for the page's policy to allow,
//! and each chart says its latest value and range in text, not by shape or colour alone.

use maud::{Markup, html};

/// Width and height of a chart's drawing, in SVG units.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;

/// A line chart of `points` (seconds from the first, value), titled, with its unit.
pub fn line_chart(title: &str, unit: &str, points: &[(f64, f64)]) -> Markup {
    let latest = points.last().map_or(0.0, |p| p.1);
    let peak = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let span = points.last().map_or(0.0, |p| p.0).max(1.0);
    let top = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    let path: String = points
        .iter()
        .enumerate()
        .map(|(i, (t, v))| {
            let x = t / span * WIDTH;
            let y = HEIGHT - v / top * HEIGHT;
            format!("{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" })
        })
        .collect();
    let minutes = (span / 60.0).round();
    let described = format!(
        "{title}: now {} {unit}, highest {} {unit} over the last {} minute(s)",
        figure(latest),
        figure(peak),
        minutes.max(1.0)
    );
    html! {
        figure.chart {
            figcaption {
                strong { (title) } " "
                span.now { (figure(latest)) " " (unit) }
                span.muted { " (peak " (figure(peak)) ", last " (minutes.max(1.0)) " min)" }
            }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) preserveAspectRatio="none"
                role="img" aria-label=(described) {
                title { (described) }
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @if points.len() > 1 {
                    path.series d=(path) {}
                }
            }
        }
    }
}

/// A bar of use against a guarantee and a maximum, each a share of the cluster (0..=1),
/// with the figures in text beside it.
pub fn share_bar(used: f64, guarantee: f64, max: f64) -> Markup {
    let scale = |share: f64| (share.clamp(0.0, 1.0) * 100.0).round();
    let label = format!(
        "uses {:.0}% of the cluster; guaranteed {:.0}%, at most {:.0}%",
        used * 100.0,
        guarantee * 100.0,
        max * 100.0
    );
    let over = used > guarantee + 1e-9;
    html! {
        span.share {
            svg.bar viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label=(label) {
                title { (label) }
                rect.max x="0" y="0" width=(scale(max)) height="10" {}
                rect class=(if over { "used over" } else { "used" }) x="0" y="2" width=(scale(used)) height="6" {}
                rect.guarantee x=(scale(guarantee).min(99.0)) y="0" width="1" height="10" {}
            }
            span.figures {
                (format!("{:.0}%", used * 100.0)) " / " (format!("{:.0}%", guarantee * 100.0))
                @if over { " (borrowing)" }
            }
        }
    }
}

/// A figure as people read it: whole numbers plain, small ones with two decimals.
pub fn figure(value: f64) -> String {
    if value.fract().abs() < 1e-9 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_states_its_latest_and_peak_in_text() {
        let chart = line_chart(
            "Finished",
            "jobs/s",
            &[(0.0, 1.0), (30.0, 4.0), (60.0, 2.5)],
        )
        .into_string();
        assert!(chart.contains("now 2.50 jobs/s"), "{chart}");
        assert!(chart.contains("highest 4 jobs/s"), "{chart}");
        assert!(chart.contains("M0.0,"), "{chart}");
        let empty = line_chart("Finished", "jobs/s", &[]).into_string();
        assert!(empty.contains("now 0 jobs/s"), "{empty}");
    }

    #[test]
    fn a_share_bar_says_when_a_queue_borrows() {
        let bar = share_bar(0.5, 0.3, 1.0).into_string();
        assert!(bar.contains("50% / 30%"), "{bar}");
        assert!(bar.contains("(borrowing)"), "{bar}");
        assert!(bar.contains("used over"), "{bar}");
        let within = share_bar(0.2, 0.3, 1.0).into_string();
        assert!(!within.contains("borrowing"), "{within}");
    }
}
