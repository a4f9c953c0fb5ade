//! Kubernetes resource quantities (`16Mi`, `1G`, `100m`, `0.5`) as bytes and millicores.

fn split(q: &str) -> (&str, &str) {
    let idx = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    q.split_at(idx)
}

fn number(n: &str, q: &str) -> Result<f64, String> {
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("invalid quantity {q:?}"))
}

/// A quantity in bytes (rounded up).
pub fn bytes(q: &str) -> Result<u64, String> {
    let (n, suffix) = split(q.trim());
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(
            s[1..]
                .parse::<i32>()
                .map_err(|_| format!("invalid quantity {q:?}"))?,
        ),
        _ => return Err(format!("invalid quantity {q:?}")),
    };
    Ok((number(n, q)? * mult).ceil() as u64)
}

/// A CPU quantity in millicores (`100m` → 100, `1` → 1000, `0.5` → 500).
pub fn millicores(q: &str) -> Result<u32, String> {
    let (n, suffix) = split(q.trim());
    let v = number(n, q)?;
    let m = match suffix {
        "m" => v,
        "" => v * 1000.0,
        _ => return Err(format!("invalid cpu quantity {q:?}")),
    };
    Ok(m.ceil().min(u32::MAX as f64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_cpu_quantities() {
        assert_eq!(bytes("16Mi").unwrap(), 16 * 1024 * 1024);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("512").unwrap(), 512);
        assert_eq!(bytes("1.5Ki").unwrap(), 1536);
        assert!(bytes("12 apples").is_err());
        assert_eq!(millicores("100m").unwrap(), 100);
        assert_eq!(millicores("2").unwrap(), 2000);
        assert_eq!(millicores("0.25").unwrap(), 250);
        assert!(millicores("1Gi").is_err());
    }
}
