use chrono::{Duration as CDuration, Offset, Timelike};
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

/// The zones of the DST properties: both switch at different dates and
/// local times (Berlin 02:00 -> 03:00 and 03:00 -> 02:00 local, last Sunday
/// of March/October; New York 02:00 -> 03:00 second Sunday of March,
/// 02:00 -> 01:00 first Sunday of November).
const ZONES: [Tz; 2] = [chrono_tz::Europe::Berlin, chrono_tz::America::New_York];

/// DST changes of [`ZONES`] in 2026 and 2027 (UTC seconds): Berlin on
/// 29 Mar, 25 Oct 2026, 28 Mar, 31 Oct 2027 (01:00 UTC); New York on 8 Mar,
/// 1 Nov 2026, 14 Mar, 7 Nov 2027 (07:00 and 06:00 UTC).
const DST_CHANGES: [[i64; 4]; 2] = [
    [1_774_746_000, 1_792_890_000, 1_806_195_600, 1_824_944_400],
    [1_772_953_200, 1_793_512_800, 1_805_007_600, 1_825_567_200],
];

#[test]
fn dst_change_instants_are_offset_changes() {
    for (tz, changes) in ZONES.iter().zip(DST_CHANGES) {
        for t in changes {
            let off = |s: i64| {
                tz.offset_from_utc_datetime(&DateTime::from_timestamp(s, 0).unwrap().naive_utc())
                    .fix()
            };
            assert_ne!(off(t - 1), off(t), "{tz} at {t}");
        }
    }
}

fn full_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

fn parse_toml(text: &str) -> Result<Window, String> {
    let c: WindowConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut errors = ConfigErrors::new();
    c.validate("w", &mut errors).ok_or_else(|| {
        let e = errors.errors();
        assert!(!e.is_empty(), "None without an error");
        assert!(e.iter().all(|e| e.key.starts_with("w.")), "{e:?}");
        format!("{e:?}")
    })
}

/// A window written back as the TOML an operator would write.
fn to_toml(w: &Window) -> String {
    let days: Vec<String> = w.days.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "days = [{}]\nstart = \"{}\"\nlength = \"{}\"\ntime_zone = \"{}\"\n",
        days.join(", "),
        w.start.format("%H:%M"),
        humantime_serde::re::humantime::format_duration(w.length),
        w.time_zone.name()
    )
}

proptest! {
    /// Arbitrary text in every field never panics: it is a window or errors
    /// under the window's key.
    #[test]
    fn parsing_arbitrary_fields_never_panics(
        days in proptest::collection::vec(
            prop_oneof![".{0,12}", "(?i)(mon|tues|wednes|thurs|fri|satur|sun)(day)?"],
            0..4,
        ),
        start in prop_oneof![".{0,8}", "[0-9]{1,3}:[0-9]{1,3}"],
        length in prop_oneof![".{0,12}", "[0-9]{1,6} ?(s|m|h|d|w|ms)"],
        zone in proptest::option::of(prop_oneof![
            ".{0,24}",
            "(Europe/Berlin|America/New_York|UTC|Mars/Olympus|europe/berlin)",
        ]),
    ) {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let days: Vec<String> = days.iter().map(|d| q(d)).collect();
        let mut text = format!(
            "days = [{}]\nstart = {}\nlength = {}\n",
            days.join(", "),
            q(&start),
            q(&length)
        );
        if let Some(z) = &zone {
            text.push_str(&format!("time_zone = {}\n", q(z)));
        }
        // Whatever parsed is a window that reads back the same when written.
        if let Ok(w) = parse_toml(&text) {
            prop_assert!(!w.length.is_zero() && w.length <= Duration::from_secs(7 * 86_400));
            prop_assert_eq!(parse_toml(&to_toml(&w)), Ok(w));
        }
    }

    /// A valid window written as TOML parses back to the same window, with
    /// day names in any case, short or long.
    #[test]
    fn valid_windows_round_trip_through_toml(
        day_mask in 0u8..128,
        start_min in 0u32..1440,
        length_min in 1u64..(7 * 1440),
        zone in 0usize..4,
        long_names in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let tz = [chrono_tz::UTC, chrono_tz::Europe::Berlin, chrono_tz::America::New_York, chrono_tz::Asia::Kolkata][zone];
        let days: Vec<Weekday> = (0..7u8)
            .filter(|i| day_mask & (1 << i) != 0)
            .map(|i| Weekday::try_from(i).unwrap())
            .collect();
        let w = Window {
            days,
            start: NaiveTime::from_hms_opt(start_min / 60, start_min % 60, 0).unwrap(),
            length: Duration::from_secs(length_min * 60),
            time_zone: tz,
        };
        prop_assert_eq!(parse_toml(&to_toml(&w)), Ok(w.clone()));
        // Other spellings of the days: full names, any case.
        let spell = |d: &Weekday| {
            let name = if long_names { full_name(*d).to_string() } else { d.to_string() };
            if upper { name.to_uppercase() } else { name.to_lowercase() }
        };
        let c = WindowConfig {
            days: w.days.iter().map(spell).collect(),
            start: w.start.format("%H:%M").to_string(),
            length: w.length,
            time_zone: Some(w.time_zone.name().to_string()),
        };
        let text = toml::to_string(&toml::Value::try_from(toml::toml! {
            days = (c.days.clone())
            start = (c.start.clone())
            length = (humantime_serde::re::humantime::format_duration(c.length).to_string())
            time_zone = (c.time_zone.clone().unwrap())
        }).unwrap()).unwrap();
        prop_assert_eq!(parse_toml(&text), Ok(w));
    }

    /// In both zones, across their DST changes: a daily window opens at its
    /// local start (the first instant after a gap when the start does not
    /// exist that day, the first occurrence when it repeats) and stays open
    /// exactly `length` of real time.
    #[test]
    fn dst_openings_and_lengths_in_two_zones(
        zone in 0usize..2,
        change in 0usize..4,
        offset in -3 * 86_400i64..3 * 86_400,
        anywhere in proptest::option::of(1_767_225_600i64..1_830_297_600), // 2026..2028
        start_min in prop_oneof![0u32..1440, 60u32..200],
        length_min in 1u64..(22 * 60),
    ) {
        let tz = ZONES[zone];
        // Mostly the days around a DST change of the zone, at times near it.
        let secs = anywhere.unwrap_or(DST_CHANGES[zone][change] + offset);
        let w = Window {
            days: vec![],
            start: NaiveTime::from_hms_opt(start_min / 60, start_min % 60, 0).unwrap(),
            length: Duration::from_secs(length_min * 60),
            time_zone: tz,
        };
        let now = DateTime::from_timestamp(secs, 0).unwrap();
        let next = w.next_open(now).unwrap();
        prop_assert!(next >= now);
        // The opening after the current one, when open now.
        let opening = if next == now {
            w.openings(now, 0).filter(|s| *s <= now).last().unwrap()
        } else {
            next
        };
        let local = opening.with_timezone(&tz);
        let m = local.hour() * 60 + local.minute();
        let day = local.date_naive();
        match tz.from_local_datetime(&day.and_time(w.start)) {
            chrono::LocalResult::Single(t) => prop_assert_eq!(t.with_timezone(&Utc), opening),
            chrono::LocalResult::Ambiguous(first, _) => {
                prop_assert_eq!(first.with_timezone(&Utc), opening)
            }
            // In the gap: the first valid minute after it.
            chrono::LocalResult::None => {
                prop_assert!(m > start_min && m <= start_min + 60);
                let just_before = local.naive_local() - CDuration::minutes(1);
                prop_assert!(tz.from_local_datetime(&just_before).single().is_none());
            }
        }
        let len = CDuration::minutes(length_min as i64);
        prop_assert!(!w.is_open(opening - CDuration::seconds(1)));
        prop_assert!(w.is_open(opening));
        prop_assert!(w.is_open(opening + len - CDuration::seconds(1)));
        prop_assert!(!w.is_open(opening + len));
    }
}
