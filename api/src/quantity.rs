//! Kubernetes resource quantities (`16Mi`, `1G`, `100m`, `0.5`, `1e3`) as bytes and
//! millicores.
//!
//! Values are computed exactly from the decimal digits and rounded up, as Kubernetes'
//! `Quantity.Value()` and `MilliValue()` do, so equal quantities have equal values
//! however they are spelled: `1.07G` and `1070M` are both 1 070 000 000 bytes, `2.007`
//! and `2007m` both 2007 millicores (floating point made them one apart).

/// A quantity: `int.frac × 10^exp10 × 1024^pow1024`, non-negative.
struct Quantity<'a> {
    /// The digits before and after the decimal point.
    int: &'a str,
    frac: &'a str,
    suffix: &'a str,
    exp10: i64,
    pow1024: u32,
}

impl<'a> Quantity<'a> {
    /// Reads `[+|-]DIGITS[.DIGITS]SUFFIX` (either digit run may be empty, not both),
    /// where SUFFIX is `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`, a binary `Ki` … `Ei`, or
    /// an exponent `e3` / `E-2`. Negative values are refused (resources are never
    /// negative), except a negative zero.
    fn parse(q: &'a str) -> Option<Quantity<'a>> {
        let (negative, rest) = match q.as_bytes().first() {
            Some(b'-') => (true, &q[1..]),
            Some(b'+') => (false, &q[1..]),
            _ => (false, q),
        };
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return None;
        }
        if negative && !(int.bytes().chain(frac.bytes()).all(|b| b == b'0')) {
            return None;
        }
        let (exp10, pow1024) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            s if s.starts_with(['e', 'E']) => (i64::from(s[1..].parse::<i32>().ok()?), 0),
            _ => return None,
        };
        Some(Quantity {
            int,
            frac,
            suffix,
            exp10,
            pow1024,
        })
    }

    /// The value in units of 10^-`scale`, rounded up, or None past `u128`.
    fn ceil_scaled(&self, scale: i64) -> Option<u128> {
        let multiplier = 1u128 << (10 * self.pow1024);
        let digits = || self.int.bytes().chain(self.frac.bytes());
        let leading_zeros = digits().take_while(|b| *b == b'0').count();
        let significant = digits().count() - leading_zeros;
        if significant == 0 {
            return Some(0);
        }
        // How many significant digits come before the decimal point once the exponent
        // is applied (negative: that many zeros come after it first).
        let point = self.int.len() as i64 - leading_zeros as i64 + self.exp10 + scale;
        if point > 40 {
            // At least 10^40: past u128 whatever the multiplier.
            return None;
        }
        if point < -40 {
            // Below 10^-40 × 1024^6 < 1, and not zero: rounds up to one unit.
            return Some(1);
        }
        let mut significant_digits = digits().skip(leading_zeros).map(|b| u128::from(b - b'0'));
        // The integer part: the first `point` significant digits, zeros past the end.
        let mut whole: u128 = 0;
        for _ in 0..point.max(0) {
            let d = significant_digits.next().unwrap_or(0);
            whole = whole.checked_mul(10)?.checked_add(d)?;
        }
        // The fraction 0.f1f2… (after `-point` zeros when point < 0) times the
        // multiplier, by long multiplication from its last digit: the carry out is the
        // whole part of the product, and any non-zero digit left in it rounds up.
        let fraction: Vec<u128> = std::iter::repeat_n(0, (-point).max(0) as usize)
            .chain(significant_digits)
            .collect();
        let mut carry: u128 = 0;
        let mut remainder = false;
        for d in fraction.iter().rev() {
            let t = d * multiplier + carry;
            remainder |= !t.is_multiple_of(10);
            carry = t / 10;
        }
        whole
            .checked_mul(multiplier)?
            .checked_add(carry)?
            .checked_add(u128::from(remainder))
    }
}

/// A quantity in bytes, rounded up; saturates at `u64::MAX`.
pub fn bytes(q: &str) -> Result<u64, String> {
    let quantity = Quantity::parse(q.trim()).ok_or_else(|| format!("invalid quantity {q:?}"))?;
    Ok(quantity
        .ceil_scaled(0)
        .map_or(u64::MAX, |v| u64::try_from(v).unwrap_or(u64::MAX)))
}

/// A CPU quantity in millicores (`100m` → 100, `1` → 1000, `0.5` → 500), rounded up;
/// saturates at `u32::MAX`. Only cores and fractions of them (`m`, `u`, `n`, as
/// metrics servers report CPU in nanocores) are accepted.
pub fn millicores(q: &str) -> Result<u32, String> {
    let quantity = Quantity::parse(q.trim()).ok_or_else(|| format!("invalid quantity {q:?}"))?;
    if !matches!(quantity.suffix, "" | "m" | "u" | "n") {
        return Err(format!("invalid cpu quantity {q:?}"));
    }
    Ok(quantity
        .ceil_scaled(3)
        .map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// Any quantity in thousandths of its unit (`250m` → 250, `2` → 2000, `1Ki` → 1 024 000),
/// rounded up; saturates at `u64::MAX`. What an autoscaler compares metric values in.
pub fn milli_value(q: &str) -> Result<u64, String> {
    let quantity = Quantity::parse(q.trim()).ok_or_else(|| format!("invalid quantity {q:?}"))?;
    Ok(quantity
        .ceil_scaled(3)
        .map_or(u64::MAX, |v| u64::try_from(v).unwrap_or(u64::MAX)))
}

/// A value in thousandths as Kubernetes writes a decimal quantity: `250m`, `2`, `3k`,
/// `12M` (the largest exact SI suffix).
pub fn format_milli(milli: u64) -> String {
    if !milli.is_multiple_of(1000) {
        return format!("{milli}m");
    }
    let mut whole = milli / 1000;
    if whole == 0 {
        return "0".into();
    }
    let mut suffix = "";
    for next in ["k", "M", "G", "T", "P", "E"] {
        if !whole.is_multiple_of(1000) {
            break;
        }
        whole /= 1000;
        suffix = next;
    }
    format!("{whole}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_values_and_their_spelling() {
        assert_eq!(milli_value("250m"), Ok(250));
        assert_eq!(milli_value("2"), Ok(2000));
        assert_eq!(milli_value("1Ki"), Ok(1_024_000));
        assert_eq!(milli_value("1.5"), Ok(1500));
        assert!(milli_value("x").is_err());
        assert_eq!(format_milli(250), "250m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(3_000_000), "3k");
        assert_eq!(format_milli(12_000_000_000), "12M");
        assert_eq!(format_milli(0), "0");
    }

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
        // Nano- and microcores, as metrics-server reports usage.
        assert_eq!(millicores("250000000n").unwrap(), 250);
        assert_eq!(millicores("1500u").unwrap(), 2);
        assert_eq!(bytes("2000000000n").unwrap(), 2);
    }

    #[test]
    fn equal_quantities_have_equal_values_however_spelled() {
        // The quantity fuzz target's first finding: in floating point, 90000000e-5 came
        // to 901 bytes and 900.00000 to 900.
        assert_eq!(bytes("900.00000"), Ok(900));
        assert_eq!(bytes("90000000e-5"), Ok(900));
        // And these were one above what they are.
        assert_eq!(millicores("2.007"), Ok(2007));
        assert_eq!(millicores("2007m"), Ok(2007));
        assert_eq!(bytes("1.07G"), Ok(1_070_000_000));
        assert_eq!(bytes("1070M"), Ok(1_070_000_000));
        assert_eq!(bytes("9007199254740993"), Ok(9_007_199_254_740_993));
    }

    #[test]
    fn values_round_up_and_saturate() {
        assert_eq!(bytes("0.1"), Ok(1));
        assert_eq!(bytes(".5"), Ok(1));
        assert_eq!(bytes("5."), Ok(5));
        assert_eq!(bytes("1.0000000001Ki"), Ok(1025));
        // 0.99999999989… bytes: rounded once, at the end.
        assert_eq!(bytes("0.0009765624999Ki"), Ok(1));
        assert_eq!(bytes("1e-400"), Ok(1));
        assert_eq!(millicores("0.0001"), Ok(1));
        assert_eq!(bytes("0e999999999"), Ok(0));
        assert_eq!(bytes("-0"), Ok(0));
        assert_eq!(bytes("1e400"), Ok(u64::MAX));
        assert_eq!(bytes("100Ei"), Ok(u64::MAX));
        assert_eq!(bytes("16Ei"), Ok(u64::MAX));
        assert_eq!(bytes("15Ei"), Ok(15 << 60));
        assert_eq!(millicores("99999999999"), Ok(u32::MAX));
        for bad in [
            "-1", ".", "", "1e", "1.2.3", "1 Ki", "1-2", "+-1", "e3", "1Kb",
        ] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
        for bad in ["1k", "1e3", "1Ki", "-5m"] {
            assert!(millicores(bad).is_err(), "{bad:?}");
        }
    }
}
