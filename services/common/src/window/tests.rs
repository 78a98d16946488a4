use chrono::{Duration as CDuration, Timelike};
use proptest::prelude::*;

use super::*;

fn berlin(days: &[Weekday], start: &str, hours: u64) -> Window {
    Window {
        days: days.to_vec(),
        start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
        length: Duration::from_secs(hours * 3600),
        time_zone: chrono_tz::Europe::Berlin,
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn weekly_window_opens_on_listed_days_only() {
    let w = berlin(&[Weekday::Mon], "22:00", 3);
    // Monday 2026-11-23 22:00 CET = 21:00 UTC.
    assert!(!w.is_open(utc("2026-11-23T20:59:59Z")));
    assert!(w.is_open(utc("2026-11-23T21:00:00Z")));
    assert!(
        w.is_open(utc("2026-11-23T23:30:00Z")),
        "spans local midnight"
    );
    assert!(!w.is_open(utc("2026-11-24T00:00:00Z")), "closes after 3h");
    assert!(!w.is_open(utc("2026-11-24T21:30:00Z")), "not on Tuesday");
    assert_eq!(
        w.next_open(utc("2026-11-24T12:00:00Z")),
        Some(utc("2026-11-30T21:00:00Z"))
    );
}

#[test]
fn dst_gap_and_repeat() {
    // 2026-03-29: Berlin skips 02:00-03:00; 2026-10-25 repeats 02:00-03:00.
    let w = berlin(&[], "02:30", 1);
    assert_eq!(
        w.next_open(utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-29T01:00:00Z")),
        "gap start opens at 03:00 CEST"
    );
    assert_eq!(
        w.next_open(utc("2026-10-24T12:00:00Z")),
        Some(utc("2026-10-25T00:30:00Z")),
        "ambiguous start opens at the first 02:30 (CEST)"
    );
}

proptest! {
    #[test]
    fn open_iff_within_length_of_a_local_start(
        secs in 1_767_225_600i64..1_830_297_600, // 2026..2028
        start_min in 0u32..1440,
        hours in 1u64..30,
        day_mask in 1u8..128,
    ) {
        let days: Vec<Weekday> = (0..7u8)
            .filter(|i| day_mask & (1 << i) != 0)
            .map(|i| Weekday::try_from(i).unwrap())
            .collect();
        let w = Window {
            days,
            start: NaiveTime::from_hms_opt(start_min / 60, start_min % 60, 0).unwrap(),
            length: Duration::from_secs(hours * 3600),
            time_zone: chrono_tz::Europe::Berlin,
        };
        let now = DateTime::from_timestamp(secs, 0).unwrap();
        let open = w.is_open(now);
        // Reference: some opening in the last `length` is a listed local day
        // at the local start (modulo DST gaps).
        let next = w.next_open(now).unwrap();
        if open {
            prop_assert_eq!(next, now);
        } else {
            prop_assert!(next > now);
            prop_assert!(w.is_open(next));
            prop_assert!(!w.is_open(next - CDuration::seconds(1)) || next - now <= CDuration::seconds(1));
            let local = next.with_timezone(&chrono_tz::Europe::Berlin);
            prop_assert!(w.days.contains(&local.weekday()));
            // The local opening time is the configured start, unless it fell in a gap.
            let m = local.hour() * 60 + local.minute();
            prop_assert!(m == start_min || (m > start_min && m <= start_min + 60));
        }
    }
}
