//! What people type and read: sizes (`512M`, `8G`), durations (`90s`, `1h30m`),
//! resources (`licence=2`), and the same figures printed back readably.

use std::time::Duration;

/// Parses a memory size into MiB: a bare number is MiB; suffixes K, M, G, T (and
/// KiB/MiB/GiB/TiB, Ki/Mi/Gi/Ti) are powers of 1024.
pub fn parse_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 512, 512M, 8G)"))?;
    let unit = unit.trim();
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mi" | "mib" | "mb" => 1.0,
        "k" | "ki" | "kib" | "kb" => 1.0 / 1024.0,
        "g" | "gi" | "gib" | "gb" => 1024.0,
        "t" | "ti" | "tib" | "tb" => 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown size unit `{unit}` (use K, M, G or T)"
            ));
        }
    };
    let mib = value * factor;
    if !mib.is_finite() || mib < 0.0 || mib > (1u64 << 40) as f64 {
        return Err(format!("`{text}` is not a sensible size"));
    }
    Ok(mib.ceil() as u64)
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, `1d`, combinations like `1h30m`; a
/// bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok(Duration::from_secs_f64(seconds));
    }
    let bad = || format!("`{text}` is not a duration (examples: 500ms, 30s, 5m, 1h30m)");
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86_400.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses `name=amount` (a custom resource) or `key=value` (a label).
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// A custom resource amount, `NAME=N` with N a whole number (`licence=2`).
pub fn parse_resource(text: &str) -> Result<(String, u64), String> {
    let (name, amount) = parse_pair(text)?;
    let amount = amount
        .parse()
        .map_err(|_| format!("`{text}`: the amount `{amount}` must be a whole number"))?;
    Ok((name, amount))
}

/// MiB as a person reads it: `512 MiB`, `8.0 GiB`.
pub fn show_mib(mib: u64) -> String {
    if mib >= 1024 * 1024 {
        format!("{:.1} TiB", mib as f64 / (1024.0 * 1024.0))
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

/// A duration in milliseconds as a person reads it: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn show_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// Cores as a person reads them: `2`, `0.5`.
pub fn show_cores(cores: f64) -> String {
    if (cores - cores.round()).abs() < 1e-9 {
        format!("{}", cores.round() as i64)
    } else {
        format!("{cores:.3}").trim_end_matches('0').to_owned()
    }
}

/// Left-aligned columns separated by two spaces, sized to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            if last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("8G"), Ok(8192));
        assert_eq!(parse_mib("1.5Gi"), Ok(1536));
        assert_eq!(parse_mib("2048K"), Ok(2));
        assert!(
            parse_mib("8X")
                .expect_err("bad unit")
                .contains("unknown size unit")
        );
        assert!(parse_mib("lots").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_combinations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn figures_print_readably() {
        assert_eq!(show_mib(512), "512 MiB");
        assert_eq!(show_mib(8192), "8.0 GiB");
        assert_eq!(show_ms(850), "850ms");
        assert_eq!(show_ms(12_345), "12.3s");
        assert_eq!(show_ms(245_000), "4m05s");
        assert_eq!(show_ms(7_800_000), "2h10m");
        assert_eq!(show_cores(2.0), "2");
        assert_eq!(show_cores(0.5), "0.5");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["a".into(), "running".into()],
                vec!["bbbb".into(), "ok".into()],
            ],
        );
        assert_eq!(t, "ID    STATE\na     running\nbbbb  ok\n");
    }
}
