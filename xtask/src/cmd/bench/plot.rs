//! Charts for the bench report as hand-written SVG: line charts with linear
//! or logarithmic axes, and bar charts. Plain string building, no
//! dependencies; every number in a chart comes from the caller's data.
//!
//! Layout: a fixed 800 x 440 canvas, the title on top, the axis labels below
//! and left of the plot area, the legend right of it.

use std::fmt::Write;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
/// Right margin of line charts (the legend) and of bar charts.
const RIGHT: f64 = 190.0;
const RIGHT_BARS: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 64.0;
/// About as many bold characters as fit across the canvas.
const TITLE_CHARS: usize = 76;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Linear,
    /// Base 10; points at or below 0 are left out.
    Log,
}

#[derive(Clone, Debug)]
pub struct Axis {
    /// With the unit, e.g. `latency (µs)`.
    pub label: String,
    pub scale: Scale,
    /// Fixed (min, max), points outside it are left out; `None`: from the
    /// data (linear axes start at 0 when the data is not negative; log axes
    /// span whole decades).
    pub range: Option<(f64, f64)>,
    /// Tick positions and labels; `None`: chosen from the range. Ticks
    /// outside the range are not drawn.
    pub ticks: Option<Vec<(f64, String)>>,
}

impl Axis {
    pub fn new(label: &str, scale: Scale) -> Axis {
        Axis {
            label: label.to_owned(),
            scale,
            range: None,
            ticks: None,
        }
    }

    pub fn range(mut self, min: f64, max: f64) -> Axis {
        self.range = Some((min, max));
        self
    }

    pub fn ticks(mut self, ticks: Vec<(f64, String)>) -> Axis {
        self.ticks = Some(ticks);
        self
    }
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_owned(),
            points,
        }
    }
}

/// One polyline with a marker per point for each series.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug)]
pub struct Bar {
    /// Under the bar; wrapped at spaces.
    pub label: String,
    pub value: f64,
    /// Above the bar, e.g. the value with its unit; `\n` breaks lines.
    pub note: String,
}

/// Vertical bars from 0, one colour each.
#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    /// With the unit, e.g. `time (s)`.
    pub y_label: String,
    pub bars: Vec<Bar>,
}

/// Maps data values onto one axis of the plot area.
struct Mapping {
    scale: Scale,
    /// In data units (log axes: the values themselves, not their logs).
    min: f64,
    max: f64,
    /// Pixel positions of `min` and `max`.
    from: f64,
    to: f64,
}

impl Mapping {
    fn t(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        }
    }

    fn px(&self, v: f64) -> f64 {
        let (a, b) = (self.t(self.min), self.t(self.max));
        let f = if b > a {
            (self.t(v) - a) / (b - a)
        } else {
            0.5
        };
        self.from + f * (self.to - self.from)
    }

    fn contains(&self, v: f64) -> bool {
        let eps = (self.max - self.min).abs() * 1e-9;
        v >= self.min - eps && v <= self.max + eps
    }
}

/// Whether `v` can be drawn on an axis of `scale`.
fn plottable(scale: Scale, v: f64) -> bool {
    v.is_finite() && (scale == Scale::Linear || v > 0.0)
}

/// A step of 1, 2 or 5 times a power of ten that cuts `span` into about
/// `n` parts.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// `v` as a tick label, with as many decimals as `step` needs, and k or M
/// when the axis reaches `big` (its largest magnitude) and the step allows,
/// so that all ticks of an axis share the unit.
pub fn number(v: f64, step: f64, big: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let (div, suffix) = if big >= 1e6 && step >= 1e5 {
        (1e6, "M")
    } else if big >= 1e3 && step >= 1e2 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let decimals = (-(step / div).log10().floor()).max(0.0) as usize;
    let s = format!("{:.*}", decimals.min(6), v / div);
    format!("{s}{suffix}")
}

/// Range and ticks of an axis over `values`.
fn layout(axis: &Axis, values: &[f64]) -> (f64, f64, Vec<(f64, String)>) {
    let vals: Vec<f64> = values
        .iter()
        .copied()
        .filter(|&v| plottable(axis.scale, v))
        .collect();
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if vals.is_empty() {
        match axis.scale {
            Scale::Linear => (0.0, 1.0),
            Scale::Log => (1.0, 10.0),
        }
    } else {
        (lo, hi)
    };
    let (min, max) = match (axis.range, axis.scale) {
        (Some(r), _) => r,
        (None, Scale::Linear) => {
            let lo = lo.min(0.0);
            let hi = if hi > lo { hi } else { lo + 1.0 };
            let step = nice_step(hi - lo, 5.0);
            ((lo / step).floor() * step, (hi / step).ceil() * step)
        }
        (None, Scale::Log) => {
            // Explicit ticks widen the range to whole decades around them too.
            let (lo, hi) = axis
                .ticks
                .iter()
                .flatten()
                .fold((lo, hi), |(a, b), t| (a.min(t.0), b.max(t.0)));
            let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
            (
                10f64.powf(lo),
                10f64.powf(if hi > lo { hi } else { lo + 1.0 }),
            )
        }
    };
    let ticks = match (&axis.ticks, axis.scale) {
        (Some(t), _) => t.clone(),
        (None, Scale::Linear) => {
            let step = nice_step(max - min, 5.0);
            let first = (min / step).ceil() as i64;
            let last = (max / step + 1e-9).floor() as i64;
            (first..=last)
                .map(|i| {
                    let v = i as f64 * step;
                    (v, number(v, step, min.abs().max(max.abs())))
                })
                .collect()
        }
        (None, Scale::Log) => {
            let (a, b) = (min.log10().ceil() as i32, max.log10().floor() as i32);
            (a..=b)
                .map(|e| {
                    let v = 10f64.powi(e);
                    (v, number(v, v, v))
                })
                .collect()
        }
    };
    (min, max, ticks)
}

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The canvas and the title (on two lines if long).
fn header(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>"
    );
    let mut lines = wrap(title, TITLE_CHARS);
    if lines.len() > 2 {
        let rest = lines.split_off(1).join(" ");
        lines.push(rest);
    }
    let (ys, size): (&[f64], u32) = if lines.len() > 1 {
        (&[19.0, 37.0], 14)
    } else {
        (&[28.0], 15)
    };
    for (line, y) in lines.iter().zip(ys) {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{y}\" text-anchor=\"middle\" font-size=\"{size}\" \
             font-weight=\"bold\">{}</text>",
            WIDTH / 2.0,
            escape(line)
        );
    }
}

/// An axis to draw: its mapping, ticks and label.
type Drawn<'a> = (&'a Mapping, &'a [(f64, String)], &'a str);

/// The plot area's frame, grid lines, ticks and axis labels; the area
/// ends `right` pixels from the canvas' right edge.
fn axes(svg: &mut String, right: f64, x: Option<Drawn>, y: Drawn) {
    let (l, r, t, b) = (LEFT, WIDTH - right, TOP, HEIGHT - BOTTOM);
    if let Some((m, ticks, label)) = x {
        for (v, text) in ticks.iter().filter(|t| m.contains(t.0)) {
            let px = m.px(*v);
            let _ = writeln!(
                svg,
                "<line x1=\"{px:.1}\" y1=\"{t}\" x2=\"{px:.1}\" y2=\"{b}\" stroke=\"#e4e4e4\"/>\n\
                 <line x1=\"{px:.1}\" y1=\"{b}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"black\"/>\n\
                 <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                b + 5.0,
                b + 18.0,
                escape(text)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (l + r) / 2.0,
            b + 40.0,
            escape(label)
        );
    }
    let (m, ticks, label) = y;
    for (v, text) in ticks.iter().filter(|t| m.contains(t.0)) {
        let py = m.px(*v);
        let _ = writeln!(
            svg,
            "<line x1=\"{l}\" y1=\"{py:.1}\" x2=\"{r}\" y2=\"{py:.1}\" stroke=\"#e4e4e4\"/>\n\
             <line x1=\"{}\" y1=\"{py:.1}\" x2=\"{l}\" y2=\"{py:.1}\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l - 5.0,
            l - 8.0,
            py + 4.0,
            escape(text)
        );
    }
    let (cx, cy) = (22.0, (t + b) / 2.0);
    let _ = writeln!(
        svg,
        "<text x=\"{cx}\" y=\"{cy:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {cx} {cy:.1})\">{}</text>\n\
         <rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
        escape(label),
        r - l,
        b - t
    );
}

impl LineChart {
    pub fn svg(&self) -> String {
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        let ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .collect();
        let (x0, x1, xticks) = layout(&self.x, &xs);
        let (y0, y1, yticks) = layout(&self.y, &ys);
        let mx = Mapping {
            scale: self.x.scale,
            min: x0,
            max: x1,
            from: LEFT,
            to: WIDTH - RIGHT,
        };
        let my = Mapping {
            scale: self.y.scale,
            min: y0,
            max: y1,
            from: HEIGHT - BOTTOM,
            to: TOP,
        };
        let mut svg = String::new();
        header(&mut svg, &self.title);
        axes(
            &mut svg,
            RIGHT,
            Some((&mx, &xticks, &self.x.label)),
            (&my, &yticks, &self.y.label),
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| {
                    plottable(self.x.scale, x)
                        && plottable(self.y.scale, y)
                        && mx.contains(x)
                        && my.contains(y)
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let coords: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", mx.px(x), my.px(y)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                coords.join(" ")
            );
            for &(x, y) in &pts {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    mx.px(x),
                    my.px(y)
                );
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = WIDTH - RIGHT + 14.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\n\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                lx + 22.0,
                lx + 28.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// `s` in lines of at most about `width` characters, broken at spaces.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

impl BarChart {
    pub fn svg(&self) -> String {
        let values: Vec<f64> = self.bars.iter().map(|b| b.value).collect();
        let y = Axis::new(&self.y_label, Scale::Linear);
        let (y0, y1, yticks) = layout(&y, &values);
        // Room above the tallest bar for its note.
        let my = Mapping {
            scale: Scale::Linear,
            min: y0,
            max: y1,
            from: HEIGHT - BOTTOM,
            to: TOP + 30.0,
        };
        let mut svg = String::new();
        header(&mut svg, &self.title);
        axes(&mut svg, RIGHT_BARS, None, (&my, &yticks, &self.y_label));
        let n = self.bars.len().max(1) as f64;
        let slot = (WIDTH - RIGHT_BARS - LEFT) / n;
        let chars = ((slot / 7.0) as usize).max(8);
        for (i, bar) in self.bars.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let v = if bar.value.is_finite() {
                bar.value.max(0.0)
            } else {
                0.0
            };
            let (top, base) = (my.px(v.min(y1)), my.px(y0.max(0.0)));
            let x = LEFT + slot * i as f64 + slot * 0.2;
            let cx = LEFT + slot * (i as f64 + 0.5);
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                slot * 0.6,
                base - top
            );
            let notes: Vec<&str> = bar.note.lines().collect();
            for (j, line) in notes.iter().enumerate() {
                let _ = writeln!(
                    svg,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    top - 6.0 - 14.0 * (notes.len() - 1 - j) as f64,
                    escape(line)
                );
            }
            for (j, line) in wrap(&bar.label, chars).iter().enumerate() {
                let _ = writeln!(
                    svg,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    HEIGHT - BOTTOM + 18.0 + 14.0 * j as f64,
                    escape(line)
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order (a small well-formedness
    /// check: names, nesting, quotes in attributes, entities in text).
    fn balanced(svg: &str) -> Result<usize, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            check_text(&rest[..start])?;
            let end = rest[start..]
                .find('>')
                .ok_or_else(|| format!("unclosed tag at {:?}", &rest[start..]))?
                + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') {
                if !tag.ends_with('?') {
                    return Err(format!("bad declaration <{tag}>"));
                }
                continue;
            }
            if !tag.matches('"').count().is_multiple_of(2) || tag.contains('<') {
                return Err(format!("bad attributes in <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                let name: String = tag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                if name.is_empty() {
                    return Err(format!("tag without a name: <{tag}>"));
                }
                elements += 1;
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
        }
        check_text(rest)?;
        match stack.is_empty() {
            true => Ok(elements),
            false => Err(format!("unclosed: {stack:?}")),
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        if text.contains('>') {
            return Err(format!("raw > in text {text:?}"));
        }
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| entity.starts_with(e))
            {
                return Err(format!("raw & in text {text:?}"));
            }
        }
        Ok(())
    }

    fn polylines(svg: &str) -> Vec<usize> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let pts = l
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                pts.split_whitespace().count()
            })
            .collect()
    }

    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                t.split('>')
                    .nth(1)
                    .unwrap()
                    .split('<')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn chart() -> LineChart {
        LineChart {
            title: "offered rate vs <completeness> & more".into(),
            x: Axis::new("offered rate (entries/s)", Scale::Linear),
            y: Axis::new("replicated (%)", Scale::Linear).range(0.0, 100.0),
            series: vec![
                Series::new(
                    "ctsync",
                    vec![(50_000.0, 100.0), (100_000.0, 100.0), (180_000.0, 99.0)],
                ),
                Series::new("conntrackd", vec![(120_000.0, 80.0), (50_000.0, 100.0)]),
            ],
        }
    }

    #[test]
    fn line_chart_has_one_point_per_datum_and_is_well_formed() {
        let svg = chart().svg();
        balanced(&svg).unwrap();
        assert_eq!(polylines(&svg), vec![3, 2]);
        assert_eq!(svg.matches("<circle").count(), 5);
        let t = texts(&svg);
        assert!(t.contains(&"offered rate vs &lt;completeness&gt; &amp; more".to_owned()));
        // x from 0 to a round maximum above 180k; y as fixed.
        assert!(t.contains(&"0".to_owned()), "{t:?}");
        assert!(t.contains(&"200k".to_owned()), "{t:?}");
        assert!(!t.contains(&"240k".to_owned()), "{t:?}");
        assert!(t.contains(&"100".to_owned()), "{t:?}");
        assert!(t.contains(&"ctsync".to_owned()) && t.contains(&"conntrackd".to_owned()));
        assert!(t.contains(&"replicated (%)".to_owned()));
    }

    #[test]
    fn points_sorted_by_x_and_inside_the_plot_area() {
        let svg = chart().svg();
        let line = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .nth(1)
            .unwrap();
        let pts: Vec<(f64, f64)> = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert!(pts[0].0 < pts[1].0);
        for (x, y) in pts {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
        }
        // 100% sits on the top edge, 0 on the bottom one.
        assert!(svg.contains(&format!(",{TOP:.1}\"")) || svg.contains(&format!(",{TOP:.1} ")));
    }

    #[test]
    fn log_axes_span_decades_and_drop_non_positive_points() {
        let c = LineChart {
            title: "latency".into(),
            x: Axis::new("percentile", Scale::Log).ticks(vec![
                (2.0, "p50".into()),
                (10.0, "p90".into()),
                (100.0, "p99".into()),
            ]),
            y: Axis::new("latency (µs)", Scale::Log),
            series: vec![Series::new(
                "10k/s",
                vec![(2.0, 35.0), (10.0, 80.0), (100.0, 900.0), (150.0, 0.0)],
            )],
        };
        let svg = c.svg();
        balanced(&svg).unwrap();
        assert_eq!(polylines(&svg), vec![3]);
        let t = texts(&svg);
        for want in ["p50", "p90", "p99", "10", "100", "1k", "latency (µs)"] {
            assert!(t.contains(&want.to_owned()), "{want} not in {t:?}");
        }
        assert!(!t.contains(&"10k".to_owned()), "{t:?}");
    }

    #[test]
    fn empty_series_still_make_a_valid_chart() {
        let c = LineChart {
            title: "nothing".into(),
            x: Axis::new("x", Scale::Log),
            y: Axis::new("y", Scale::Linear),
            series: vec![Series::new("none", vec![])],
        };
        let svg = c.svg();
        balanced(&svg).unwrap();
        assert_eq!(polylines(&svg), vec![0]);
    }

    #[test]
    fn bar_chart_has_one_bar_per_value_scaled_to_the_axis() {
        let c = BarChart {
            title: "commit of 100000 entries".into(),
            y_label: "time (s)".into(),
            bars: vec![
                Bar {
                    label: "ctsync".into(),
                    value: 0.42,
                    note: "0.42 s\n238k/s".into(),
                },
                Bar {
                    label: "kernel ceiling: ctgen, no listener".into(),
                    value: 0.40,
                    note: "0.40 s".into(),
                },
                Bar {
                    label: "conntrackd -c".into(),
                    value: 1.9,
                    note: "1.90 s".into(),
                },
            ],
        };
        let svg = c.svg();
        balanced(&svg).unwrap();
        // The background, the frame, then the three bars.
        let rects: Vec<&str> = svg.lines().filter(|l| l.starts_with("<rect")).collect();
        assert_eq!(rects.len(), 2 + 3, "{rects:?}");
        let height = |l: &str| -> f64 {
            l.split("height=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let (a, c3) = (height(rects[2]), height(rects[4]));
        assert!((c3 / a - 1.9 / 0.42).abs() < 0.05, "{a} {c3}");
        let t = texts(&svg);
        for want in [
            "0.42 s",
            "238k/s",
            "ctsync",
            "conntrackd -c",
            "2.0",
            "time (s)",
        ] {
            assert!(t.contains(&want.to_owned()), "{want} not in {t:?}");
        }
    }

    #[test]
    fn tick_numbers() {
        assert_eq!(number(0.0, 0.5, 2.0), "0");
        assert_eq!(number(1.5, 0.5, 2.0), "1.5");
        assert_eq!(number(150_000.0, 50_000.0, 200_000.0), "150k");
        assert_eq!(number(500_000.0, 500_000.0, 2e6), "0.5M");
        assert_eq!(number(2_000_000.0, 500_000.0, 2e6), "2.0M");
        assert_eq!(number(20.0, 5.0, 40.0), "20");
        assert_eq!(number(1000.0, 1000.0, 1000.0), "1k");
        assert_eq!(number(0.01, 0.01, 0.01), "0.01");
        assert_eq!(nice_step(180_000.0, 5.0), 50_000.0);
        assert_eq!(nice_step(1.0, 5.0), 0.2);
    }

    #[test]
    fn tag_balance_check_catches_mistakes() {
        assert!(balanced("<svg><g></svg>").is_err());
        assert!(balanced("<svg><text>a & b</text></svg>").is_err());
        assert!(balanced("<svg><text x=\"1>a</text></svg>").is_err());
        assert_eq!(balanced("<svg><g/><text>a &amp; b</text></svg>"), Ok(3));
    }

    #[test]
    fn long_titles_take_two_lines() {
        let mut c = chart();
        c.title = "word ".repeat(40);
        let svg = c.svg();
        balanced(&svg).unwrap();
        let bold: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("font-weight=\"bold\""))
            .collect();
        assert_eq!(bold.len(), 2);
        assert_eq!(
            texts(&svg)
                .iter()
                .filter(|t| t.starts_with("word"))
                .map(|t| t.matches("word").count())
                .sum::<usize>(),
            40
        );
    }

    #[test]
    fn labels_wrap_at_spaces() {
        assert_eq!(
            wrap("kernel ceiling: ctgen, no listener", 16),
            vec!["kernel ceiling:", "ctgen, no", "listener"]
        );
    }
}
