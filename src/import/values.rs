//! fail2ban's value syntax: booleans, `name[a=1, b=2]` options, times; and durations as a pipeline
//! writes them.

/// Python's `_as_bool`.
pub(super) fn as_bool(v: &str) -> bool {
    matches!(v.trim().to_lowercase().as_str(), "1" | "on" | "true" | "yes")
}

/// fail2ban's `extractOptions`: `name[a=1, b="x, y"]` → ("name", {a: 1, b: "x, y"}).
pub(super) fn extract_options(v: &str) -> Result<(String, Vec<(String, String)>), String> {
    let v = v.trim();
    let (name, rest) = match v.find('[') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let name = name.trim().to_string();
    if name.is_empty() {
        return Err(format!("no name in {v:?}"));
    }
    let mut opts = Vec::new();
    let Some(rest) = rest else { return Ok((name, opts)) };
    let Some(body) = rest.trim_end().strip_suffix(']') else {
        return Err(format!("{v:?}: '[' without ']'"));
    };
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || "_-.".contains(chars[i])) {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if key.is_empty() || chars.get(i) != Some(&'=') {
            return Err(format!(
                "{v:?}: expected NAME=VALUE at {:?}",
                chars[start..].iter().take(25).collect::<String>()
            ));
        }
        i += 1;
        let value: String = match chars.get(i) {
            Some(&q) if q == '"' || q == '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or_else(|| format!("{v:?}: unclosed {q}"))?;
                let s = chars[i + 1..i + 1 + end].iter().collect();
                i += end + 2;
                s
            }
            _ => {
                let s0 = i;
                while i < chars.len() && chars[i] != ',' && chars[i] != ']' {
                    i += 1;
                }
                chars[s0..i].iter().collect()
            }
        };
        // `][` separates option groups.
        if chars.get(i) == Some(&']') {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if chars.get(i) == Some(&'[') {
                i += 1;
            } else if i < chars.len() {
                return Err(format!("{v:?}: unexpected text after ']'"));
            }
        } else if i < chars.len() && chars[i] != ',' {
            return Err(format!("{v:?}: unexpected {:?}", chars[i]));
        }
        opts.push((key.trim().to_string(), value.trim().to_string()));
    }
    Ok((name, opts))
}

/// fail2ban's `MyTime.str2seconds`: `600`, `10m`, `1h 30m`, `1d12h`, `2w`, `1mo`, `1y`,
/// `1year-6mo`; `-1` is forever.
pub(super) fn seconds(v: &str) -> Result<f64, String> {
    let bad = || format!("{v:?} is not a time fail2ban reads (e.g. 600, 10m, 1h 30m, 1d, 1w)");
    let s = v.trim().to_lowercase();
    if s.is_empty() {
        return Err(bad());
    }
    let chars: Vec<char> = s.chars().collect();
    let (mut i, mut total, mut sign, mut any) = (0, 0.0f64, 1.0f64, false);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == '+' {
            i += 1;
            continue;
        }
        if c == '-' {
            sign = -sign;
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let num: f64 = chars[start..i].iter().collect::<String>().parse().map_err(|_| bad())?;
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let ustart = i;
        while i < chars.len() && chars[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit: String = chars[ustart..i].iter().collect();
        let mult = match unit.as_str() {
            "" | "s" | "ss" | "se" | "sec" | "second" | "seconds" => 1.0,
            "m" | "mm" | "mi" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hh" | "ho" | "hou" | "hour" | "hours" => 3600.0,
            "d" | "dd" | "da" | "day" | "days" => 86400.0,
            "w" | "ww" | "we" | "wee" | "week" | "weeks" => 7.0 * 86400.0,
            "mo" | "mon" | "month" | "months" => (365.0 * 3.0 + 366.0) * 86400.0 / 4.0 / 12.0,
            "y" | "yy" | "ye" | "yea" | "year" | "years" => (365.0 * 3.0 + 366.0) * 86400.0 / 4.0,
            _ => return Err(bad()),
        };
        total += sign * num * mult;
        sign = 1.0;
        any = true;
    }
    if !any || !total.is_finite() {
        return Err(bad());
    }
    Ok(total)
}

/// A duration as a pipeline file writes it.
pub(super) fn dur_text(secs: u64) -> String {
    if secs >= crate::config::Dur::PERMANENT.secs() {
        return "permanent".to_string();
    }
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}
