//! Resource quantities (`skiff_api::quantity`: `bytes` for memory, `millicores` for
//! CPU). Neither panics, and, as in Kubernetes, a quantity's value does not depend on
//! how it is spelled: `1.07G`, `1070M`, `1070000000` and `107e7` are the same number of
//! bytes, `2.007` and `2007m` the same millicores. A result printed back in its
//! canonical form (`N` bytes, `Nm` millicores) parses to itself, and `N` with a binary
//! suffix is exactly N times its power of 1024.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::quantity::{bytes, millicores};

skiff_fuzz::cap_allocations!();

/// A non-negative decimal quantity as digits and a power of ten: `digits × 10^exp`.
struct Decimal {
    digits: String,
    exp: i64,
}

impl Decimal {
    /// Reads `[+]DIGITS[.DIGITS](SUFFIX)` where SUFFIX is a decimal SI suffix or an
    /// exponent (`e3`, `E-2`); None for anything else (binary suffixes, signs, junk).
    fn parse(s: &str) -> Option<Decimal> {
        let s = s.strip_prefix('+').unwrap_or(s);
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return None;
        }
        let shift: i64 = match suffix {
            "" => 0,
            "m" => -3,
            "k" => 3,
            "M" => 6,
            "G" => 9,
            "T" => 12,
            "P" => 15,
            "E" => 18,
            _ => {
                let exp = suffix.strip_prefix(['e', 'E'])?;
                let exp = exp.strip_prefix('+').unwrap_or(exp);
                if exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    return None;
                }
                exp.parse::<i32>().ok()?.into()
            }
        };
        let digits = format!("{int}{frac}");
        let trimmed = digits.trim_start_matches('0');
        Some(Decimal {
            digits: if trimmed.is_empty() { "0" } else { trimmed }.to_string(),
            exp: shift - frac.len() as i64,
        })
    }

    /// The same number with no suffix (`1070000000`, `0.0015`), when that is not absurdly
    /// long.
    fn plain(&self, shift: i64) -> Option<String> {
        let exp = self.exp + shift;
        if exp.abs() > 64 {
            return None;
        }
        let digits = &self.digits;
        Some(if exp >= 0 {
            format!("{digits}{}", "0".repeat(exp as usize))
        } else {
            let point = digits.len() as i64 + exp;
            if point > 0 {
                let (int, frac) = digits.split_at(point as usize);
                format!("{int}.{frac}")
            } else {
                format!("0.{}{digits}", "0".repeat((-point) as usize))
            }
        })
    }
}

const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

fuzz_target!(|data: &[u8]| {
    let Some(input) = skiff_fuzz::text(data) else {
        return;
    };
    let memory = bytes(input);
    let cpu = millicores(input);

    if let Ok(b) = memory {
        assert_eq!(bytes(&b.to_string()), Ok(b), "{input:?} is {b} bytes");
    }
    if let Ok(m) = cpu {
        assert_eq!(millicores(&format!("{m}m")), Ok(m), "{input:?} is {m}m");
        let cores = format!("{}.{:03}", m / 1000, m % 1000);
        assert_eq!(
            millicores(&cores),
            Ok(m),
            "{input:?} is {m}m, {cores} cores"
        );
    }

    if let Some(q) = Decimal::parse(input.trim()) {
        let mut spellings: Vec<String> = q.plain(0).into_iter().collect();
        if i32::try_from(q.exp).is_ok() {
            spellings.push(format!("{}e{}", q.digits, q.exp));
        }
        if let Ok(b) = memory {
            for s in &spellings {
                assert_eq!(bytes(s), Ok(b), "{input:?} and {s:?} are the same quantity");
            }
        }
        if let Ok(m) = cpu {
            let mut cpu_spellings = vec![format!("{}m", q.plain(3).unwrap_or_default())];
            cpu_spellings.extend(q.plain(0));
            for s in &cpu_spellings {
                if s != "m" {
                    assert_eq!(millicores(s), Ok(m), "{input:?} and {s:?} are the same CPU");
                }
            }
        }
    }

    // `N` with a binary suffix is N × 1024^k, saturating at the largest u64.
    if let Some((n, suffix)) = input.split_at_checked(input.len().saturating_sub(2))
        && let Some(k) = BINARY.iter().position(|s| *s == suffix)
        && let Ok(n) = n.parse::<u64>()
    {
        let expected = (u128::from(n) << (10 * (k + 1))).min(u128::from(u64::MAX)) as u64;
        assert_eq!(
            bytes(input),
            Ok(expected),
            "{input:?} is {n} × 1024^{}",
            k + 1
        );
    }
});
