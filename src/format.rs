//! tracemalloc-compatible text.

/// Formats a byte count exactly as Python's `tracemalloc._format_size`: units B, KiB, MiB, GiB,
/// TiB with a space before the unit; below 10240 B a whole number of bytes; then one decimal
/// below 100 and none from 100 to 10239 of a unit; TiB never moves on. `sign` prints `+` on
/// non-negative values (`+0 B`). Rounding is `printf`'s: half to even on the binary value
/// (63.5 B prints `64 B`, 62.5 B prints `62 B`, 102399 B prints `100.0 KiB`).
pub fn format_size(size: f64, sign: bool) -> String {
    // Python's sizes are ints; an int zero has no sign.
    let mut size = if size == 0.0 { 0.0 } else { size };
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if size.abs() < 100.0 && unit != "B" {
            return if sign {
                format!("{size:+.1} {unit}")
            } else {
                format!("{size:.1} {unit}")
            };
        }
        if size.abs() < 10.0 * 1024.0 || unit == "TiB" {
            return if sign {
                format!("{size:+.0} {unit}")
            } else {
                format!("{size:.0} {unit}")
            };
        }
        size /= 1024.0;
    }
    unreachable!("the TiB branch always returns")
}

#[cfg(test)]
mod tests {
    use super::format_size;

    /// (bytes, unsigned, signed, negated and signed), printed by CPython 3.11.7's
    /// `tracemalloc._format_size` on this machine.
    const PYTHON: &[(f64, &str, &str, &str)] = &[
        (0.0, "0 B", "+0 B", "+0 B"),
        (1.0, "1 B", "+1 B", "-1 B"),
        (1023.0, "1023 B", "+1023 B", "-1023 B"),
        (1024.0, "1024 B", "+1024 B", "-1024 B"),
        (10239.0, "10239 B", "+10239 B", "-10239 B"),
        (10240.0, "10.0 KiB", "+10.0 KiB", "-10.0 KiB"),
        (10241.0, "10.0 KiB", "+10.0 KiB", "-10.0 KiB"),
        (102399.0, "100.0 KiB", "+100.0 KiB", "-100.0 KiB"),
        (102400.0, "100 KiB", "+100 KiB", "-100 KiB"),
        (1048575.0, "1024 KiB", "+1024 KiB", "-1024 KiB"),
        (1048576.0, "1024 KiB", "+1024 KiB", "-1024 KiB"),
        (10485760.0, "10.0 MiB", "+10.0 MiB", "-10.0 MiB"),
        (104857600.0, "100 MiB", "+100 MiB", "-100 MiB"),
        (5368709120.0, "5120 MiB", "+5120 MiB", "-5120 MiB"),
        (1e16, "9095 TiB", "+9095 TiB", "-9095 TiB"),
        (63.5, "64 B", "+64 B", "-64 B"),
        (62.5, "62 B", "+62 B", "-62 B"),
        (1041.8, "1042 B", "+1042 B", "-1042 B"),
        (102338.56, "99.9 KiB", "+99.9 KiB", "-99.9 KiB"),
        (104805171.2, "100.0 MiB", "+100.0 MiB", "-100.0 MiB"),
        (3991832.0, "3898 KiB", "+3898 KiB", "-3898 KiB"),
        (46694.0, "45.6 KiB", "+45.6 KiB", "-45.6 KiB"),
    ];

    #[test]
    fn matches_python_tracemalloc() {
        for &(bytes, plain, signed, negative) in PYTHON {
            assert_eq!(format_size(bytes, false), plain, "{bytes}");
            assert_eq!(format_size(bytes, true), signed, "+{bytes}");
            assert_eq!(format_size(-bytes, true), negative, "-{bytes}");
        }
    }
}
