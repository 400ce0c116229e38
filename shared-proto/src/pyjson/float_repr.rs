//! Python's `repr(float)` (which `json.dumps` uses for finite floats).
//!
//! Python prints the shortest decimal that rounds back to the same double,
//! breaking an exact tie between two equally near shortest candidates towards
//! the even one (David Gay's `dtoa`, mode 0). Rust's `{:e}` finds the same
//! shortest length but may break such a tie the other way, so this module
//! takes Rust's digits, corrects ties with exact integer arithmetic, and lays
//! the result out the way `repr` does. It must not allocate or panic.

use std::fmt::{self, Write as _};

/// `repr` switches to scientific notation when the decimal exponent of the
/// leading digit is below this...
const SCIENTIFIC_BELOW_EXPONENT: i32 = -4;
/// ...or at least this.
const SCIENTIFIC_FROM_EXPONENT: i32 = 16;

pub(super) fn write_float_repr(number: f64, out: &mut String) {
    if number.is_nan() {
        out.push_str("NaN");
        return;
    }
    if number.is_infinite() {
        out.push_str(if number > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    if number.is_sign_negative() {
        out.push('-');
    }
    let magnitude = number.abs();
    if magnitude == 0.0 {
        out.push_str("0.0");
        return;
    }
    match shortest_decimal(magnitude) {
        Some(decimal) => write_layout(decimal, out),
        // Unreachable for finite non-zero input; still print something that
        // round-trips rather than nothing.
        None => {
            let _ = write!(out, "{magnitude:?}");
        }
    }
}

/// `significand × 10^exponent`, with no trailing zeros in `significand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    significand: u64,
    exponent: i32,
}

impl Decimal {
    fn normalized(mut self) -> Self {
        while self.significand != 0 && self.significand.is_multiple_of(10) {
            self.significand /= 10;
            self.exponent += 1;
        }
        self
    }

    fn parses_to(self, expected: f64) -> bool {
        let mut scratch = ScratchBuffer::default();
        write!(scratch, "{}e{}", self.significand, self.exponent).is_ok()
            && scratch.as_str().parse::<f64>() == Ok(expected)
    }
}

fn shortest_decimal(magnitude: f64) -> Option<Decimal> {
    let mut scratch = ScratchBuffer::default();
    write!(scratch, "{magnitude:e}").ok()?;
    let formatted = scratch.as_str();
    let (mantissa, exponent) = formatted.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let mut significand: u64 = 0;
    let mut digit_count: i32 = 0;
    for digit in mantissa.bytes().filter(u8::is_ascii_digit) {
        significand = significand
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        digit_count += 1;
    }
    let shortest = Decimal {
        significand,
        exponent: exponent - (digit_count - 1),
    };
    Some(break_tie_to_even(magnitude, shortest))
}

/// When the double lies exactly halfway between the shortest candidate and
/// its neighbour, Python keeps whichever has an even last digit.
fn break_tie_to_even(magnitude: f64, shortest: Decimal) -> Decimal {
    let Decimal {
        significand,
        exponent,
    } = shortest;
    if significand.is_multiple_of(2) {
        return shortest;
    }
    let Some(scaled) = significand.checked_mul(10) else {
        return shortest;
    };
    let neighbour = if scaled
        .checked_add(5)
        .is_some_and(|midpoint| equals_exactly(magnitude, midpoint, exponent - 1))
    {
        significand + 1
    } else if scaled
        .checked_sub(5)
        .is_some_and(|midpoint| equals_exactly(magnitude, midpoint, exponent - 1))
    {
        significand - 1
    } else {
        return shortest;
    };
    let candidate = Decimal {
        significand: neighbour,
        exponent,
    }
    .normalized();
    if candidate.significand != 0 && candidate.parses_to(magnitude) {
        candidate
    } else {
        shortest
    }
}

/// Largest power of five below 2^53: beyond it `digits × 10^power` always has
/// an odd part too wide for a double's 53-bit significand.
const MAX_EXACT_POSITIVE_POWER: u32 = 22;
/// Largest power of five a 19-digit integer can be divisible by.
const MAX_EXACT_NEGATIVE_POWER: u32 = 27;

/// Whether the double `value` (positive, finite) is exactly
/// `digits × 10^power`, compared as odd part × power of two.
fn equals_exactly(value: f64, digits: u64, power: i32) -> bool {
    if digits == 0 {
        return false;
    }
    let scaled: u128 = if power >= 0 {
        let power = power.unsigned_abs();
        if power > MAX_EXACT_POSITIVE_POWER {
            return false;
        }
        u128::from(digits) * 5u128.pow(power)
    } else {
        let power = power.unsigned_abs();
        if power > MAX_EXACT_NEGATIVE_POWER {
            return false;
        }
        let five_power = 5u64.pow(power);
        if !digits.is_multiple_of(five_power) {
            return false;
        }
        u128::from(digits / five_power)
    };
    // digits × 10^power = scaled × 2^power
    let shift = scaled.trailing_zeros();
    let decimal_odd = scaled >> shift;
    let decimal_binary_exponent = power + shift as i32;

    let (value_odd, value_binary_exponent) = odd_binary_parts(value);
    decimal_odd == u128::from(value_odd) && decimal_binary_exponent == value_binary_exponent
}

/// `value = odd × 2^exponent` for a positive finite double.
fn odd_binary_parts(value: f64) -> (u64, i32) {
    const FRACTION_BITS: u32 = 52;
    const EXPONENT_BIAS: i32 = 1075;
    let bits = value.to_bits();
    let fraction = bits & ((1 << FRACTION_BITS) - 1);
    let biased_exponent = ((bits >> FRACTION_BITS) & 0x7ff) as i32;
    let (mantissa, exponent) = if biased_exponent == 0 {
        (fraction, 1 - EXPONENT_BIAS)
    } else {
        (
            fraction | (1 << FRACTION_BITS),
            biased_exponent - EXPONENT_BIAS,
        )
    };
    let shift = mantissa.trailing_zeros().min(63);
    (mantissa >> shift, exponent + shift as i32)
}

fn write_layout(decimal: Decimal, out: &mut String) {
    let mut scratch = ScratchBuffer::default();
    if write!(scratch, "{}", decimal.significand).is_err() {
        return;
    }
    let digits = scratch.as_str();
    let digit_count = digits.len() as i32;
    // Exponent of the leading digit, as in `d.ddd × 10^leading_exponent`.
    let leading_exponent = decimal.exponent + digit_count - 1;
    let (lead_digit, fraction_digits) = digits.split_at_checked(1).unwrap_or((digits, ""));

    if !(SCIENTIFIC_BELOW_EXPONENT..SCIENTIFIC_FROM_EXPONENT).contains(&leading_exponent) {
        out.push_str(lead_digit);
        if !fraction_digits.is_empty() {
            out.push('.');
            out.push_str(fraction_digits);
        }
        let sign = if leading_exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", leading_exponent.unsigned_abs());
    } else if leading_exponent < 0 {
        out.push_str("0.");
        push_zeros(out, leading_exponent.unsigned_abs() as usize - 1);
        out.push_str(digits);
    } else {
        // The lead digit plus this many more form the integer part.
        let integer_tail_length = leading_exponent.unsigned_abs() as usize;
        out.push_str(lead_digit);
        match fraction_digits.split_at_checked(integer_tail_length) {
            Some((integer_tail, fraction)) if !fraction.is_empty() => {
                out.push_str(integer_tail);
                out.push('.');
                out.push_str(fraction);
            }
            _ => {
                out.push_str(fraction_digits);
                push_zeros(
                    out,
                    integer_tail_length.saturating_sub(fraction_digits.len()),
                );
                out.push_str(".0");
            }
        }
    }
}

fn push_zeros(out: &mut String, count: usize) {
    out.extend(std::iter::repeat_n('0', count));
}

/// Room for any `{:e}` rendering of an f64 and any `{significand}e{exponent}`
/// built here (at most 17 digits plus point, `e`, sign and four exponent
/// digits).
struct ScratchBuffer {
    bytes: [u8; 40],
    length: usize,
}

impl Default for ScratchBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 40],
            length: 0,
        }
    }
}

impl ScratchBuffer {
    fn as_str(&self) -> &str {
        self.bytes
            .get(..self.length)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl fmt::Write for ScratchBuffer {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.length.checked_add(text.len()).ok_or(fmt::Error)?;
        let target = self.bytes.get_mut(self.length..end).ok_or(fmt::Error)?;
        target.copy_from_slice(text.as_bytes());
        self.length = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(number: f64) -> String {
        let mut out = String::new();
        write_float_repr(number, &mut out);
        out
    }

    #[test]
    fn exact_ties_go_to_even() {
        // Exactly -1197121051156210.25: both ...210.2 and ...210.3 round-trip.
        assert_eq!(
            repr(f64::from_bits(0xc3110319dc077bc9)),
            "-1197121051156210.2"
        );
    }

    #[test]
    fn exactness_check() {
        assert!(equals_exactly(0.25, 25, -2));
        assert!(equals_exactly(1e22, 1, 22));
        assert!(!equals_exactly(1e23, 1, 23));
        assert!(!equals_exactly(0.1, 1, -1));
        assert!(equals_exactly(
            f64::from_bits(0x43110319dc077bc9),
            119712105115621025,
            -2
        ));
    }
}
