//! Sizes and durations as operators write and read them: `20G`, `512M`,
//! `1.5T`, `4096` in; `20 GiB`, `1.50 GiB` out; `5s`, `500ms` for timeouts;
//! `4.2 s`, `12 s`, `3 min` for lease ages.
//!
//! Every unit is binary (K = 1024), as in rbd, qemu-img and LVM. `GB` is
//! refused rather than guessed: some tools mean 10^9 by it.

use std::time::Duration;

const UNITS: [(&str, u32); 6] = [
    ("B", 0),
    ("K", 10),
    ("M", 20),
    ("G", 30),
    ("T", 40),
    ("P", 50),
];

/// Digits after the decimal point accepted in a size (`1.5G`).
const FRACTION_DIGITS_MAX: usize = 9;

/// Parses `20G`, `20GiB`, `512m`, `1.5T`, `4096`, `4096B` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: write a number of bytes or a number with K, M, G, T or P (e.g. 20G)"
        ));
    }
    let shift = unit_shift(unit).ok_or_else(|| {
        let upper = unit.to_ascii_uppercase();
        if upper.len() == 2
            && upper.ends_with('B')
            && unit_shift(&upper[..1]).is_some_and(|shift| shift > 0)
        {
            format!(
                "{text:?} is ambiguous: weft sizes are binary, write {number}{} or {number}{}iB",
                &upper[..1],
                &upper[..1]
            )
        } else {
            format!(
                "unknown size unit {unit:?} in {text:?}: use K, M, G, T or P (powers of 1024), e.g. 20G"
            )
        }
    })?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > FRACTION_DIGITS_MAX {
        return Err(format!("{text:?} is not a size"));
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction
            .parse()
            .map_err(|_| format!("{text:?} is not a size"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let unit = 1u128 << shift;
    let numerator = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction_value))
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(too_large)?;
    if numerator % scale != 0 {
        return Err(format!("{text:?} is not a whole number of bytes"));
    }
    u64::try_from(numerator / scale).map_err(|_| too_large())
}

fn unit_shift(unit: &str) -> Option<u32> {
    let upper = unit.to_ascii_uppercase();
    if upper.is_empty() {
        return Some(0);
    }
    UNITS.iter().find_map(|(name, shift)| {
        let long = format!("{name}IB");
        (upper == *name || (*shift > 0 && upper == long)).then_some(*shift)
    })
}

/// `21474836480` → `20 GiB`; a size that is not a whole number of its unit
/// gets two decimals (`1.50 GiB`), so a rounded figure never looks exact.
pub fn format_size(bytes: u64) -> String {
    let (name, shift) = UNITS
        .iter()
        .rev()
        .find(|(_, shift)| bytes >> shift > 0)
        .copied()
        .unwrap_or(("B", 0));
    if shift == 0 {
        return format!("{bytes} B");
    }
    let unit = 1u64 << shift;
    if bytes.is_multiple_of(unit) {
        format!("{} {name}iB", bytes >> shift)
    } else {
        format!("{:.2} {name}iB", bytes as f64 / unit as f64)
    }
}

/// Parses `5s`, `500ms`, `2m`, `1.5s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 5s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s or m")),
    };
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!("{text:?}: must be more than 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A span of time for people: `850 ms`, `4.2 s`, `12 s`, `5 min`, `3 h`,
/// `2 d`.
pub fn format_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per input: what `parse_size` makes of it.
    #[test]
    fn sizes_in() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("4096", Ok(4096)),
            ("4096B", Ok(4096)),
            ("512M", Ok(512 << 20)),
            ("512m", Ok(512 << 20)),
            ("20G", Ok(20 << 30)),
            ("20GiB", Ok(20 << 30)),
            ("20 G", Ok(20 << 30)),
            ("1T", Ok(1 << 40)),
            ("1.5G", Ok(3 << 29)),
            ("0.5K", Ok(512)),
            ("0", Ok(0)),
            ("1P", Ok(1 << 50)),
            ("12Q", Err("unknown size unit \"Q\"")),
            ("20GB", Err("ambiguous")),
            ("", Err("is not a size")),
            ("G", Err("is not a size")),
            ("-1G", Err("is not a size")),
            ("1.2.3G", Err("is not a size")),
            ("0.3B", Err("not a whole number of bytes")),
            ("99999999999999999999999P", Err("too large")),
            ("16384P", Err("too large")),
        ];
        for (input, want) in table {
            match (parse_size(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{input:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input:?}: {got}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sizes_out() {
        let table: &[(u64, &str)] = &[
            (0, "0 B"),
            (512, "512 B"),
            (4096, "4 KiB"),
            (20 << 30, "20 GiB"),
            (3 << 29, "1.50 GiB"),
            ((20 << 30) + 512, "20.00 GiB"),
            (1 << 50, "1 PiB"),
        ];
        for (bytes, want) in table {
            assert_eq!(format_size(*bytes), *want, "{bytes}");
            if !want.contains('.') {
                // What weft prints, weft reads back.
                let back = want.replace(' ', "").replace("iB", "");
                assert_eq!(parse_size(&back), Ok(*bytes), "{want}");
            }
        }
    }

    #[test]
    fn durations() {
        let table: &[(&str, Option<u64>)] = &[
            ("5s", Some(5_000)),
            ("5", Some(5_000)),
            ("500ms", Some(500)),
            ("1.5s", Some(1_500)),
            ("2m", Some(120_000)),
            ("0s", None),
            ("2h", None),
            ("soon", None),
        ];
        for (input, want) in table {
            let got = parse_duration(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "{input:?}");
        }
        let spans: &[(u64, &str)] = &[
            (850, "850 ms"),
            (4_200, "4.2 s"),
            (12_400, "12 s"),
            (300_000, "5 min"),
            (10_800_000, "3 h"),
            (172_800_000, "2 d"),
        ];
        for (ms, want) in spans {
            assert_eq!(format_ms(*ms), *want);
        }
    }
}
