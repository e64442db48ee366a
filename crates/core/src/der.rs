//! Just enough DER for what the crate reads of certificates itself (validity, extensions,
//! names): every length is checked against the bytes at hand, and nothing is allocated by a
//! length read from the input.

pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const VERSION: u8 = 0xa0;
pub(crate) const EXTENSIONS: u8 = 0xa3;
/// GeneralName's `[2] IMPLICIT IA5String` and `[7] IMPLICIT OCTET STRING`.
pub(crate) const DNS_NAME: u8 = 0x82;
pub(crate) const IP_ADDRESS: u8 = 0x87;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The tag and content of the element at the start of `bytes`, and what follows it.
/// Multi-byte tags and indefinite lengths (not DER, and not in certificates) are refused.
pub(crate) fn any(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (len, rest) = rest.split_at_checked(count)?;
        let len = len.iter().try_fold(0usize, |len, b| len.checked_mul(256)?.checked_add(usize::from(*b)))?;
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// The content of the element at the start of `bytes`, if it has tag `tag`, and what follows.
pub(crate) fn element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = any(bytes)?;
    (found == tag).then_some((content, rest))
}

/// What follows the element at the start of `bytes`.
pub(crate) fn skip(bytes: &[u8]) -> Option<&[u8]> {
    any(bytes).map(|(_, _, rest)| rest)
}

/// The elements that make up `bytes` (tag, content), if all of it reads as elements.
pub(crate) fn elements(bytes: &[u8]) -> Option<impl Iterator<Item = (u8, &[u8])>> {
    let mut check = bytes;
    while !check.is_empty() {
        check = skip(check)?;
    }
    let mut rest = bytes;
    Some(std::iter::from_fn(move || {
        let (tag, content, next) = any(rest)?;
        rest = next;
        Some((tag, content))
    }))
}

/// The time at the start of `bytes`, in seconds since 1970 (negative before), and what
/// follows: UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
pub(crate) fn time(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, content, rest) = any(bytes)?;
    let digits = content.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |digits: &[u8]| digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    let (year, fields) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let (yy, fields) = digits.split_at_checked(2)?;
            let yy = number(yy);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, fields)
        }
        (GENERALIZED_TIME, 14) => {
            let (yyyy, fields) = digits.split_at_checked(4)?;
            (number(yyyy), fields)
        }
        _ => return None,
    };
    let field = |at: usize| fields.get(at..at + 2).map(number);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((seconds, rest))
}

/// Days from 1970-01-01 to the date (the proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// An OID's content as dotted decimal, for messages.
pub(crate) fn dotted(oid: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut arc = 0u64;
    for &byte in oid {
        let Some(shifted) = arc.checked_mul(128) else {
            return "an unreadable identifier".to_owned();
        };
        arc = shifted | u64::from(byte & 0x7f);
        if byte & 0x80 != 0 {
            continue;
        }
        let _ = if out.is_empty() {
            let first = arc.min(80) / 40;
            write!(out, "{first}.{}", arc - first * 40)
        } else {
            write!(out, ".{arc}")
        };
        arc = 0;
    }
    if out.is_empty() { "an unreadable identifier".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_calendar_says() {
        let at = |tag: u8, text: &str| {
            let mut der = vec![tag, text.len() as u8];
            der.extend_from_slice(text.as_bytes());
            time(&der).map(|(t, _)| t)
        };
        assert_eq!(at(UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(at(UTC_TIME, "360101000000Z"), Some(2_082_758_400));
        assert_eq!(at(UTC_TIME, "500101000000Z"), Some(-631_152_000), "before 1970");
        assert_eq!(at(GENERALIZED_TIME, "20240229120000Z"), Some(1_709_208_000));
        assert_eq!(at(GENERALIZED_TIME, "99991231235959Z"), Some(253_402_300_799));
        assert_eq!(at(UTC_TIME, "701301000000Z"), None, "month 13");
        assert_eq!(at(UTC_TIME, "7001010000Z"), None, "too short");
        assert_eq!(at(0x04, "700101000000Z"), None, "not a time");
        assert_eq!(at(UTC_TIME, "1é345678901Z"), None, "not digits (slicing would cut a character in half)");
        assert_eq!(at(GENERALIZED_TIME, "2024022912000é"), None);
    }
}
