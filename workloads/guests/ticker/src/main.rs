//! ticker [INTERVAL] [COUNT]
//!
//! Prints `tick N` (N from 1) to stdout, flushing after each line, and sleeps
//! INTERVAL between ticks. INTERVAL is a whole number with a unit: `ns`, `us`,
//! `ms`, `s` or `m` (a bare number means seconds); the default is `1s`.
//! Without COUNT it runs forever; with COUNT (> 0) it exits 0 right after
//! printing `tick COUNT`. Bad arguments: a message on stderr and exit 2.

use std::io::Write;
use std::time::Duration;

fn parse_interval(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    })
}

fn usage(msg: &str) -> ! {
    eprintln!("ticker: {msg}\nusage: ticker [INTERVAL e.g. 100ms|1s] [COUNT]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let interval = match args.get(1) {
        Some(s) => parse_interval(s).unwrap_or_else(|| usage(&format!("bad interval {s:?}"))),
        None => Duration::from_secs(1),
    };
    let count: Option<u64> = match args.get(2) {
        Some(s) => match s.parse() {
            Ok(n) if n > 0 => Some(n),
            _ => usage(&format!("bad count {s:?}")),
        },
        None => None,
    };
    let stdout = std::io::stdout();
    let mut n: u64 = 1;
    loop {
        {
            let mut out = stdout.lock();
            let _ = writeln!(out, "tick {n}");
            let _ = out.flush();
        }
        if count == Some(n) {
            return;
        }
        std::thread::sleep(interval);
        n += 1;
    }
}
