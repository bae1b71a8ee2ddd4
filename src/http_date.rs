//! `Retry-After` values: delay-seconds or an HTTP-date (RFC 9110 10.2.3). Dates are parsed by
//! `httpdate`, which accepts exactly the three forms a recipient must (IMF-fixdate, and the
//! obsolete RFC 850 and asctime forms) and refuses out-of-range fields and impossible dates.

use std::time::UNIX_EPOCH;

/// The absolute time in ms since the epoch that a `Retry-After` value names, given `now_ms`;
/// `None` when the value is neither delay-seconds nor an HTTP-date.
pub fn retry_after_reset_ms(value: &[u8], now_ms: u64) -> Option<u64> {
    let text = std::str::from_utf8(value.trim_ascii()).ok()?;
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, so the one way `parse` fails is a number past u64: such a delay, like
        // any too large for milliseconds, saturates.
        let seconds = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(now_ms.saturating_add(seconds.saturating_mul(1000)));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    let since_epoch = date.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;

    /// The time a `Retry-After` date names, in seconds.
    fn date(text: &str) -> Option<u64> {
        retry_after_reset_ms(text.as_bytes(), NOW).map(|ms| ms / 1000)
    }

    #[test]
    fn the_three_date_forms_agree() {
        let expected = Some(784_111_777);
        assert_eq!(date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(date("Fri, 31 Dec 9999 23:59:59 GMT"), Some(253_402_300_799));
    }

    #[test]
    fn garbage_is_not_a_date() {
        for bad in [
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37:01 GMT",
            "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
        ] {
            assert_eq!(date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_become_absolute() {
        let now = NOW;
        assert_eq!(retry_after_reset_ms(b"5", now), Some(now + 5_000));
        assert_eq!(retry_after_reset_ms(b" 0 ", now), Some(now));
        assert_eq!(
            retry_after_reset_ms(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(784_111_777_000)
        );
        assert!(retry_after_reset_ms(b"99999999999999999999999", now).is_some());
        assert_eq!(retry_after_reset_ms(b"-5", now), None);
        assert_eq!(retry_after_reset_ms(b"5s", now), None);
        assert_eq!(retry_after_reset_ms(b"\xff", now), None);
    }

    #[test]
    fn out_of_range_and_overflowing_fields_are_refused() {
        let now = NOW;
        for bad in [
            "Sun, 06 Nov 1994 -9223372036854775808:00:00 GMT",
            "Sun, 06 Nov 1994 -5:00:00 GMT",
            "Sun, 06 Nov 1994 08:-1:00 GMT",
            "Sun, 06 Nov 1994 08:49:-37 GMT",
            "Sun, 06 Nov 1994 99999999999999999999:00:00 GMT",
            "Sun, -6 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun Nov  6 -8:49:37 1994",
            "Sunday, 06-Nov-94 -8:49:37 GMT",
        ] {
            assert_eq!(retry_after_reset_ms(bad.as_bytes(), now), None, "{bad}");
        }
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let now = NOW;
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999",
        ] {
            let reset = retry_after_reset_ms(huge.as_bytes(), now).unwrap();
            assert!(reset > now + 1_000_000_000_000, "{huge}: {reset}");
        }
        assert_eq!(retry_after_reset_ms(b"+5", now), None);
        assert_eq!(retry_after_reset_ms(b"5 5", now), None);
        assert_eq!(retry_after_reset_ms(b"", now), None);
    }
}
