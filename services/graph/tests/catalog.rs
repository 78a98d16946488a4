//! The catalog's accept/reject rules on the real Fedora CoreOS fixtures.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use upshift_cincinnati::graph::PayloadScheme;
use upshift_graph::catalog::{Applied, Catalog, LoadState, ScopeKey};
use upshift_graph::source::{FailureKind, RawMetadata, SourceEvent};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fcos")
}

fn releases() -> Bytes {
    Bytes::from(std::fs::read(fixtures().join("stable/releases.json")).unwrap())
}

fn updates(revision: u32) -> Bytes {
    let path = fixtures().join(format!("stable/updates-history/{revision:03}.json"));
    Bytes::from(std::fs::read(path).unwrap())
}

const RELEASES_AT: &str = "/srv/streams/stable/releases.json";
const UPDATES_AT: &str = "/srv/streams/stable/updates.json";

fn event(releases: Bytes, updates: Bytes) -> SourceEvent {
    SourceEvent {
        stream: "stable".into(),
        result: Ok(RawMetadata {
            releases,
            updates,
            releases_from: RELEASES_AT.into(),
            updates_from: UPDATES_AT.into(),
        }),
    }
}

/// The release index without any aarch64 payload.
fn releases_without_aarch64() -> Bytes {
    let mut index: serde_json::Value = serde_json::from_slice(&releases()).unwrap();
    for release in index["releases"].as_array_mut().unwrap() {
        release["commits"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["architecture"] != "aarch64");
    }
    Bytes::from(serde_json::to_vec(&index).unwrap())
}

fn aarch64() -> ScopeKey {
    ScopeKey {
        basearch: "aarch64".into(),
        ..x86()
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn x86() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

fn catalog(state_file: Option<PathBuf>) -> Catalog {
    Catalog::new(
        [("stable".to_string(), "test".to_string(), Vec::new())],
        state_file,
    )
}

#[test]
fn accepted_change_bumps_revision_once_and_same_content_does_not() {
    let mut catalog = catalog(None);
    let first = catalog.apply(event(releases(), updates(1)), at(1));
    let Applied::Changed(rev1, scopes) = first else {
        panic!("expected a change, got {first:?}")
    };
    assert_eq!(rev1, 1);
    assert!(scopes.contains(&x86()));
    assert_eq!(
        catalog.apply(event(releases(), updates(1)), at(2)),
        Applied::Unchanged
    );
    // Whitespace-only differences parse to the same graph: still unchanged.
    let reformatted: serde_json::Value = serde_json::from_slice(&updates(1)).unwrap();
    let compact = Bytes::from(serde_json::to_vec(&reformatted).unwrap());
    assert_eq!(
        catalog.apply(event(releases(), compact), at(3)),
        Applied::Unchanged
    );
    assert_eq!(catalog.snapshot().revision, 1);

    let next = (2..=26).find(|&r| {
        matches!(
            catalog.apply(event(releases(), updates(r)), at(10 + u64::from(r))),
            Applied::Changed(..)
        )
    });
    assert!(next.is_some(), "some later revision changes the graph");
    assert_eq!(catalog.snapshot().revision, 2);
}

#[test]
fn malformed_input_is_rejected_and_last_good_keeps_serving() {
    let mut catalog = catalog(None);
    catalog.apply(event(releases(), updates(26)), at(1));
    let good = catalog.snapshot().scopes[&x86()].digest.clone();

    let bad = [
        (Bytes::from_static(b"{\"releases\": ["), updates(26), FailureKind::Parse, RELEASES_AT),
        (releases(), Bytes::from_static(b"not json"), FailureKind::Parse, UPDATES_AT),
        (
            releases(),
            Bytes::from_static(br#"{"stream":"stable","releases":[{"version":"x","metadata":{"rollout":{"start_percentage":"half"}}}]}"#),
            FailureKind::Parse,
            UPDATES_AT,
        ),
    ];
    for (releases, updates, kind, file) in bad {
        let applied = catalog.apply(event(releases, updates), at(2));
        let Applied::Rejected(failure) = applied else {
            panic!("expected rejection, got {applied:?}")
        };
        assert_eq!(failure.kind, kind);
        assert_eq!(failure.file, file, "the full path names the file");
        let status = &catalog.snapshot().sources["stable"];
        assert_eq!(status.failure.as_ref().unwrap().file, file);
        let snapshot = catalog.snapshot();
        assert_eq!(snapshot.sources["stable"].state, LoadState::Rejected);
        assert_eq!(
            snapshot.scopes[&x86()].digest,
            good,
            "last good graph keeps serving"
        );
        assert_eq!(snapshot.revision, 1);
    }
    // Recovery clears the rejection.
    assert_eq!(
        catalog.apply(event(releases(), updates(26)), at(3)),
        Applied::Unchanged
    );
    assert_eq!(catalog.snapshot().sources["stable"].state, LoadState::Ok);
}

#[test]
fn a_missing_file_before_any_load_leaves_the_stream_unavailable() {
    let mut catalog = catalog(None);
    let missing = SourceEvent {
        stream: "stable".into(),
        result: Err(upshift_graph::source::LoadFailure {
            file: "/srv/stable/updates.json".into(),
            kind: FailureKind::Missing,
            message: "No such file or directory".into(),
        }),
    };
    assert!(matches!(
        catalog.apply(missing, at(1)),
        Applied::Rejected(_)
    ));
    let snapshot = catalog.snapshot();
    assert_eq!(snapshot.sources["stable"].state, LoadState::NeverLoaded);
    assert!(snapshot.scopes.is_empty());
}

#[test]
fn duplicate_versions_reject_the_whole_stream() {
    let mut catalog = catalog(None);
    let mut index: serde_json::Value = serde_json::from_slice(&releases()).unwrap();
    let first = index["releases"][0].clone();
    index["releases"].as_array_mut().unwrap().push(first);
    let applied = catalog.apply(
        event(
            Bytes::from(serde_json::to_vec(&index).unwrap()),
            updates(26),
        ),
        at(1),
    );
    let Applied::Rejected(failure) = applied else {
        panic!("expected rejection, got {applied:?}")
    };
    assert_eq!(failure.kind, FailureKind::Invalid);
    assert_eq!(failure.file, RELEASES_AT, "the duplicate is in the index");
}

#[test]
fn unknown_versions_in_updates_are_warnings() {
    let mut catalog = catalog(None);
    let latest = Bytes::from(std::fs::read(fixtures().join("latest/updates-stable.json")).unwrap());
    let applied = catalog.apply(event(releases(), latest), at(1));
    assert!(matches!(applied, Applied::Changed(..)), "{applied:?}");
    assert!(!catalog.snapshot().sources["stable"].warnings.is_empty());
}

#[test]
fn restart_keeps_revisions_of_unchanged_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("graph-state.json");
    let mut first = catalog(Some(state.clone()));
    first.apply(event(releases(), updates(1)), at(1));
    first.apply(event(releases(), updates(26)), at(2));
    let before = first.snapshot();
    drop(first);

    let mut second = catalog(Some(state.clone()));
    assert_eq!(
        second.apply(event(releases(), updates(26)), at(3)),
        Applied::Unchanged
    );
    let after = second.snapshot();
    assert_eq!(after.revision, before.revision);
    assert_eq!(
        after.scopes[&x86()].revision,
        before.scopes[&x86()].revision
    );
    // A real change after the restart gets a fresh, higher revision.
    let applied = second.apply(event(releases(), updates(1)), at(4));
    assert_eq!(applied_revision(&applied), Some(before.revision + 1));
}

fn applied_revision(applied: &Applied) -> Option<u64> {
    match applied {
        Applied::Changed(revision, _) => Some(*revision),
        _ => None,
    }
}

/// A scope that goes away and comes back with the very same graph is a
/// change: a new, higher revision, so watchers see it again. Also across a
/// restart in between.
#[test]
fn a_scope_removed_and_re_added_gets_a_new_revision() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("graph-state.json");
    let mut catalog = catalog(Some(state.clone()));
    catalog.apply(event(releases(), updates(26)), at(1));
    let first = catalog.snapshot();
    let old = first.scopes[&aarch64()].clone();

    let removed = catalog.apply(event(releases_without_aarch64(), updates(26)), at(2));
    let Applied::Changed(rev_removed, scopes) = removed else {
        panic!("removing a scope is a change: {removed:?}")
    };
    assert!(scopes.contains(&aarch64()));
    assert!(!catalog.snapshot().scopes.contains_key(&aarch64()));

    let back = catalog.apply(event(releases(), updates(26)), at(3));
    let Applied::Changed(rev_back, scopes) = back else {
        panic!("re-adding a scope is a change: {back:?}")
    };
    assert!(rev_back > rev_removed && rev_removed > first.revision);
    assert!(scopes.contains(&aarch64()));
    assert!(!scopes.contains(&x86()), "x86_64 did not change");
    let again = catalog.snapshot().scopes[&aarch64()].clone();
    assert_eq!(again.digest, old.digest, "the very same graph");
    assert_eq!(again.revision, rev_back);

    // Removed, then the service restarts, then it comes back.
    catalog.apply(event(releases_without_aarch64(), updates(26)), at(4));
    let gone = catalog.snapshot().revision;
    drop(catalog);
    let mut restarted = self::catalog(Some(state));
    restarted.apply(event(releases_without_aarch64(), updates(26)), at(5));
    assert_eq!(
        restarted.snapshot().revision,
        gone,
        "unchanged after restart"
    );
    let back = restarted.apply(event(releases(), updates(26)), at(6));
    assert_eq!(applied_revision(&back), Some(gone + 1), "{back:?}");
}

#[test]
fn configured_architectures_choose_the_scopes_and_the_default_is_every_one_in_the_index() {
    let scopes = |archs: &[&str]| {
        let mut catalog = Catalog::new(
            [(
                "stable".to_string(),
                "test".to_string(),
                archs.iter().map(|a| a.to_string()).collect(),
            )],
            None,
        );
        catalog.apply(event(releases(), updates(58)), at(1));
        let snapshot = catalog.snapshot();
        let keys: Vec<(String, PayloadScheme)> = snapshot
            .scopes
            .keys()
            .map(|k| (k.basearch.clone(), k.scheme))
            .collect();
        (keys, snapshot.sources["stable"].architectures.clone())
    };
    let both = [
        ("aarch64".to_string(), PayloadScheme::Checksum),
        ("aarch64".to_string(), PayloadScheme::Oci),
        ("x86_64".to_string(), PayloadScheme::Checksum),
        ("x86_64".to_string(), PayloadScheme::Oci),
    ];
    assert_eq!(
        scopes(&[]),
        (
            both.to_vec(),
            vec!["aarch64".to_string(), "x86_64".to_string()]
        )
    );
    assert_eq!(
        scopes(&["x86_64"]),
        (both[2..].to_vec(), vec!["x86_64".to_string()])
    );
}
